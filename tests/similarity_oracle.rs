//! The similarity, item-similarity and recommendation views agree with plain batch oracles
//! (written from the definitions in DESIGN "Views") at the final as-of time, on random streams
//! with random forgets, dismissals and opt-outs/opt-ins, on 1 and 3 workers; and the
//! recommendations of other users after a forget equal those of a stream without that user.

mod common;

use behave::event::{Event, Sym, UserId, Value};
use behave::views::recommend::{recommendations_from, Catalog, RecommendParams};
use behave::views::similarity::{
    cosine_fixed, item_similarity, similarity, Consent, Interactions, ItemSimilarityParams,
    SimilarityParams, SCORE_SCALE,
};
use common::dataflow::{at, inserts, run_view_ticked, schedule, Update};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

const DAY: i64 = 86_400;
const START: i64 = 1_701_388_800; // 2023-12-01T00:00:00Z

// ---------------------------------------------------------------------------------------------
// Parameters.

#[derive(Clone, Debug)]
struct Params {
    sim: SimilarityParams,
    items: ItemSimilarityParams,
    rec: RecommendParams,
}

fn catalog() -> Catalog {
    Catalog::from_names([
        ("i0", vec!["drama"]),
        ("i1", vec!["drama", "war"]),
        ("i2", vec!["comedy"]),
        ("i3", vec!["comedy", "drama"]),
        ("i4", vec!["war"]),
        ("i6", vec!["comedy", "romance", "drama"]),
    ])
}

fn params(k: usize, cap: u64, n: usize, within: Option<i64>, weight: i64, min: bool) -> Params {
    Params {
        sim: SimilarityParams {
            interactions: Interactions {
                events: vec![Sym::of("rate"), Sym::of("buy")],
                min_value: min.then_some(Value(3_000_000)),
            },
            k,
            max_item_users: cap,
            consent: Some(Consent {
                opt_out: Sym::of("opt_out"),
                opt_in: Some(Sym::of("opt_in")),
            }),
        },
        items: ItemSimilarityParams {
            k,
            max_user_items: cap,
        },
        rec: RecommendParams {
            n,
            dismiss: Some(Sym::of("dismiss")),
            popular_within: within,
            catalog: Some(Arc::new(catalog())),
            content_weight: weight,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Oracles: the definitions, literally.

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Expected {
    /// `(user, neighbour) -> fixed-point cosine`.
    similarity: BTreeMap<(UserId, UserId), i64>,
    /// `(item, neighbour) -> fixed-point cosine`.
    items: BTreeMap<(Sym, Sym), i64>,
    /// `(user, rank) -> (item, score)`.
    recommendations: BTreeMap<(UserId, u32), (Sym, i64)>,
}

fn is_interaction(p: &Params, e: &Event) -> bool {
    let rule = &p.sim.interactions;
    e.item.is_some()
        && rule.events.contains(&e.kind)
        && match rule.min_value {
            None => true,
            Some(min) => matches!(e.value, Some(v) if v >= min),
        }
}

fn opted_out_users(p: &Params, events: &[Event]) -> BTreeSet<UserId> {
    let consent = p.sim.consent.as_ref().unwrap();
    let mut latest: BTreeMap<UserId, (i64, bool)> = BTreeMap::new();
    for e in events {
        let opt_in = Some(e.kind) == consent.opt_in;
        if opt_in || e.kind == consent.opt_out {
            // Latest by time; at equal times the opt-in wins.
            let entry = latest.entry(e.user).or_insert((e.time, opt_in));
            if (e.time, opt_in) > *entry {
                *entry = (e.time, opt_in);
            }
        }
    }
    latest
        .into_iter()
        .filter(|(_, (_, opt_in))| !opt_in)
        .map(|(u, _)| u)
        .collect()
}

/// Top `k` of `candidates` `(neighbour, overlap, size, neighbour size)` by exact cosine (compared
/// as `overlap² / (size · neighbour size)` with floats on exact small integers would do too, but
/// cross-multiplied integers are obviously exact), ties by the smaller neighbour.
fn top_k<N: Ord + Copy>(mut candidates: Vec<(N, u64, u64, u64)>, k: usize) -> Vec<(N, i64)> {
    candidates.sort_by(|a, b| {
        let lhs = (a.1 * a.1) as u128 * (b.2 * b.3) as u128;
        let rhs = (b.1 * b.1) as u128 * (a.2 * a.3) as u128;
        rhs.cmp(&lhs).then(a.0.cmp(&b.0))
    });
    candidates
        .into_iter()
        .take(k)
        .map(|(n, o, a, b)| (n, cosine_fixed(o, a, b)))
        .collect()
}

/// Cosine top-k over `sets` (member -> set of groups); groups with more than `cap` members do
/// not count in overlaps (they do in the sizes).
fn oracle_cosine<M: Ord + Copy, G: Ord + Copy>(
    sets: &BTreeMap<M, BTreeSet<G>>,
    k: usize,
    cap: u64,
) -> BTreeMap<(M, M), i64> {
    let mut members_of: BTreeMap<G, u64> = BTreeMap::new();
    for groups in sets.values() {
        for g in groups {
            *members_of.entry(*g).or_default() += 1;
        }
    }
    let mut out = BTreeMap::new();
    for (a, ga) in sets {
        let mut candidates = Vec::new();
        for (b, gb) in sets {
            if a == b {
                continue;
            }
            let overlap = ga
                .intersection(gb)
                .filter(|g| members_of[*g] <= cap)
                .count() as u64;
            if overlap > 0 {
                candidates.push((*b, overlap, ga.len() as u64, gb.len() as u64));
            }
        }
        for (b, score) in top_k(candidates, k) {
            out.insert((*a, b), score);
        }
    }
    out
}

fn oracle(p: &Params, events: &[Event], as_of: i64) -> Expected {
    let out = opted_out_users(p, events);
    let mut all: BTreeMap<UserId, BTreeSet<Sym>> = BTreeMap::new();
    let mut dismissed: BTreeMap<UserId, BTreeSet<Sym>> = BTreeMap::new();
    let users: BTreeSet<UserId> = events.iter().map(|e| e.user).collect();
    for e in events {
        if is_interaction(p, e) {
            all.entry(e.user).or_default().insert(e.item.unwrap());
        }
        if Some(e.kind) == p.rec.dismiss {
            if let Some(item) = e.item {
                dismissed.entry(e.user).or_default().insert(item);
            }
        }
    }
    let sim_sets: BTreeMap<UserId, BTreeSet<Sym>> = all
        .iter()
        .filter(|(u, _)| !out.contains(u))
        .map(|(u, s)| (*u, s.clone()))
        .collect();
    let similarity = oracle_cosine(&sim_sets, p.sim.k, p.sim.max_item_users);
    let mut user_sets: BTreeMap<Sym, BTreeSet<UserId>> = BTreeMap::new();
    for (u, items) in &sim_sets {
        for i in items {
            user_sets.entry(*i).or_default().insert(*u);
        }
    }
    let items = oracle_cosine(&user_sets, p.items.k, p.items.max_user_items);

    // Popularity: distinct users with an interaction in (as_of - within, as_of].
    let mut popular_users: BTreeMap<Sym, BTreeSet<UserId>> = BTreeMap::new();
    for e in events {
        let recent = p.rec.popular_within.is_none_or(|d| e.time > as_of - d);
        if is_interaction(p, e) && recent {
            popular_users
                .entry(e.item.unwrap())
                .or_default()
                .insert(e.user);
        }
    }
    let mut popular: Vec<(Sym, u64)> = popular_users
        .iter()
        .map(|(i, us)| (*i, us.len() as u64))
        .collect();
    popular.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));

    let no_tags = Catalog::default();
    let catalog = p.rec.catalog.as_deref().unwrap_or(&no_tags);
    let mut recommendations = BTreeMap::new();
    let empty = BTreeSet::new();
    for u in &users {
        let own = all.get(u).unwrap_or(&empty);
        let gone = dismissed.get(u).unwrap_or(&empty);
        let fresh = |i: &Sym| !own.contains(i) && !gone.contains(i);
        let neighbours: Vec<(UserId, i64)> = similarity
            .iter()
            .filter(|((a, _), _)| a == u)
            .map(|((_, b), s)| (*b, *s))
            .collect();
        let mut ranked: Vec<(i64, Sym)> = if neighbours.is_empty() {
            popular
                .iter()
                .filter(|(i, _)| fresh(i))
                .map(|(i, n)| (*n as i64 * SCORE_SCALE, *i))
                .collect()
        } else {
            let mut scores: BTreeMap<Sym, i64> = BTreeMap::new();
            for (v, w) in &neighbours {
                for i in &all[v] {
                    if fresh(i) {
                        *scores.entry(*i).or_default() += w;
                    }
                }
            }
            // Tag profile of the user's own items, and the content cosine of each candidate.
            let mut profile: BTreeMap<Sym, i64> = BTreeMap::new();
            for i in own {
                for t in catalog.tags(*i) {
                    *profile.entry(*t).or_default() += 1;
                }
            }
            let norm_sq: i64 = profile.values().map(|c| c * c).sum();
            scores
                .into_iter()
                .map(|(i, cf)| {
                    let tags = catalog.tags(i);
                    let dot: i64 = tags
                        .iter()
                        .map(|t| profile.get(t).copied().unwrap_or(0))
                        .sum();
                    let content = if dot == 0 {
                        0
                    } else {
                        let c = dot as f64 / ((norm_sq * tags.len() as i64) as f64).sqrt();
                        (c * SCORE_SCALE as f64).round() as i64
                    };
                    let extra = (content as i128 * p.rec.content_weight as i128 / 1_000_000) as i64;
                    (cf + extra, i)
                })
                .collect()
        };
        ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (rank, (score, item)) in ranked.into_iter().take(p.rec.n).enumerate() {
            recommendations.insert((*u, rank as u32 + 1), (item, score));
        }
    }
    Expected {
        similarity,
        items,
        recommendations,
    }
}

// ---------------------------------------------------------------------------------------------
// Dataflow under test: all three views in one dataflow.

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Out {
    Sim(UserId, UserId, i64),
    Item(Sym, Sym, i64),
    Rec(UserId, u32, Sym, i64),
}

fn dataflow(workers: usize, updates: &[Update], p: &Params) -> Vec<(Out, u64, isize)> {
    dataflow_ticked(workers, updates, None, p)
}

/// The dataflow with the popularity window expiring at ticks at every update time and at
/// `ticks_until`, when given (as the runtime does), else at exact seconds.
fn dataflow_ticked(
    workers: usize,
    updates: &[Update],
    ticks_until: Option<u64>,
    p: &Params,
) -> Vec<(Out, u64, isize)> {
    let p = p.clone();
    run_view_ticked(workers, updates, ticks_until, move |events, expiry_at| {
        let neighbours = similarity(events.clone(), &p.sim);
        let items = item_similarity(events.clone(), &p.sim, &p.items)
            .map(|(i, s)| Out::Item(i, s.neighbour, s.fixed()));
        let recs = recommendations_from(events, neighbours.clone(), &p.sim, &p.rec, &expiry_at)
            .map(|(u, r)| Out::Rec(u, r.rank, r.item, r.score));
        neighbours
            .map(|(u, s)| Out::Sim(u, s.neighbour, s.fixed()))
            .concat(items)
            .concat(recs)
    })
}

fn observed(out: &[(Out, u64, isize)], as_of: i64) -> Expected {
    let mut seen = Expected::default();
    for (datum, mult) in at(out, as_of as u64) {
        assert_eq!(mult, 1, "{datum:?} has multiplicity {mult}");
        match datum {
            Out::Sim(u, v, s) => {
                assert!(seen.similarity.insert((u, v), s).is_none());
            }
            Out::Item(i, j, s) => {
                assert!(seen.items.insert((i, j), s).is_none());
            }
            Out::Rec(u, r, i, s) => {
                assert!(
                    seen.recommendations.insert((u, r), (i, s)).is_none(),
                    "two items at rank {r} for {u}"
                );
            }
        }
    }
    seen
}

// ---------------------------------------------------------------------------------------------
// Random streams.

fn arb_event() -> impl Strategy<Value = Event> {
    (0u64..8, 0i64..(30 * DAY), 0usize..7, 0usize..8, 1i64..=5).prop_map(
        |(user, offset, kind, item, value)| {
            let kind = [
                "rate", "rate", "rate", "buy", "dismiss", "opt_out", "opt_in",
            ][kind];
            let mut e = Event::new(UserId(user), START + offset - offset % 3_600, kind);
            if !kind.starts_with("opt") {
                e = e.with_item(&format!("i{item}"));
            }
            if kind == "rate" {
                e.value = Some(Value(value * 1_000_000));
            }
            e
        },
    )
}

fn arb_params() -> impl Strategy<Value = Params> {
    (
        1usize..4,
        prop_oneof![Just(2u64), Just(4), Just(500)],
        1usize..4,
        prop::option::of(prop_oneof![Just(DAY), Just(7 * DAY)]),
        prop_oneof![Just(0i64), Just(500_000), Just(2_000_000)],
        any::<bool>(),
    )
        .prop_map(|(k, cap, n, within, weight, min)| params(k, cap, n, within, weight, min))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn views_match_oracle_with_forgets(
        events in proptest::collection::vec(arb_event(), 0..50),
        forgets in proptest::collection::vec((0u64..9, 0i64..(35 * DAY)), 0..3),
        p in arb_params(),
        tick in prop_oneof![Just(1i64), Just(3_600), Just(DAY)],
        workers in prop_oneof![Just(1usize), Just(3)],
        ticked in any::<bool>(),
    ) {
        let forgets: Vec<(u64, i64)> = forgets.into_iter().map(|(u, t)| (u, START + t)).collect();
        let (updates, as_of, survivors) = schedule(&events, &forgets, tick, START);
        let out = dataflow_ticked(workers, &updates, ticked.then_some(as_of as u64), &p);
        prop_assert_eq!(observed(&out, as_of), oracle(&p, &survivors, as_of));
    }

    /// Forgetting `u` leaves every other user's neighbours and recommendations exactly as in a
    /// stream where `u` never existed (and `u` has no row at all).
    #[test]
    fn forgetting_equals_never_existing(
        events in proptest::collection::vec(arb_event(), 1..50),
        forgotten in 0u64..8,
        p in arb_params(),
        workers in prop_oneof![Just(1usize), Just(3)],
    ) {
        let last = events.iter().map(|e| e.time).max().unwrap();
        let forgets = vec![(forgotten, last)];
        let (updates, as_of, survivors) = schedule(&events, &forgets, 3_600, START);
        let forgot = observed(&dataflow(workers, &updates, &p), as_of);
        let never = observed(&dataflow(workers, &inserts(&survivors), &p), as_of);
        prop_assert!(forgot.similarity.keys().all(|(u, v)| u.0 != forgotten && v.0 != forgotten));
        prop_assert!(forgot.recommendations.keys().all(|(u, _)| u.0 != forgotten));
        prop_assert_eq!(forgot, never);
    }
}

// ---------------------------------------------------------------------------------------------
// Hand-checked cases.

fn rate(user: u64, day: i64, item: &str, value: i64) -> Event {
    let mut e = Event::new(UserId(user), START + day * DAY, "rate").with_item(item);
    e.value = Some(Value(value * 1_000_000));
    e
}

#[test]
fn hand_checked_neighbours_scores_and_fallbacks() {
    // 1: {a, b, c}; 2: {a, b}; 3: {c, d}; 4 opted out with {a, d}; 5 only dismissed "d".
    let mut events = vec![
        rate(1, 0, "a", 5),
        rate(1, 0, "b", 5),
        rate(1, 0, "c", 5),
        rate(2, 1, "a", 5),
        rate(2, 1, "b", 5),
        rate(3, 2, "c", 5),
        rate(3, 2, "d", 5),
        rate(4, 2, "a", 5),
        rate(4, 2, "d", 5),
        Event::new(UserId(4), START + 3 * DAY, "opt_out"),
        Event::new(UserId(5), START + 3 * DAY, "dismiss").with_item("d"),
    ];
    let mut p = params(2, 500, 2, None, 0, false);
    p.rec.catalog = None;
    let expected = oracle(&p, &events, START + 3 * DAY);
    let s = |o, a, b| cosine_fixed(o, a, b);
    // cos(1,2) = 2/sqrt(6), cos(1,3) = 1/sqrt(6), cos(2,3) = 0.
    assert_eq!(
        expected.similarity,
        BTreeMap::from([
            ((UserId(1), UserId(2)), s(2, 3, 2)),
            ((UserId(1), UserId(3)), s(1, 3, 2)),
            ((UserId(2), UserId(1)), s(2, 2, 3)),
            ((UserId(3), UserId(1)), s(1, 2, 3)),
        ])
    );
    assert_eq!(s(2, 3, 2), 816_496_580_928);
    // 1 gets d via 3; 2 gets c via 1; 3 gets a and b via 1 (equal score, a first).
    // 4 (opted out) and 5 (cold) get popular items: a (3 users), b, c, d (2 users each).
    let r = |pairs: &[(u64, u32, &str, i64)]| -> BTreeMap<(UserId, u32), (Sym, i64)> {
        pairs
            .iter()
            .map(|(u, rank, i, sc)| ((UserId(*u), *rank), (Sym::of(i), *sc)))
            .collect()
    };
    let mut popular_bc = [("b", 2i64), ("c", 2)];
    popular_bc.sort_by_key(|(i, _)| Sym::of(i));
    let mut popular_abc = [("a", 3i64), popular_bc[0], popular_bc[1]];
    popular_abc[1..].sort_by_key(|(i, _)| Sym::of(i));
    let mut three = [("a", s(1, 2, 3)), ("b", s(1, 2, 3))];
    three.sort_by_key(|(i, _)| Sym::of(i));
    assert_eq!(
        expected.recommendations,
        r(&[
            (1, 1, "d", s(1, 3, 2)),
            (2, 1, "c", s(2, 2, 3)),
            (3, 1, three[0].0, three[0].1),
            (3, 2, three[1].0, three[1].1),
            (4, 1, popular_bc[0].0, popular_bc[0].1 * SCORE_SCALE),
            (4, 2, popular_bc[1].0, popular_bc[1].1 * SCORE_SCALE),
            (5, 1, popular_abc[0].0, popular_abc[0].1 * SCORE_SCALE),
            (5, 2, popular_abc[1].0, popular_abc[1].1 * SCORE_SCALE),
        ])
    );
    let (updates, as_of, _) = schedule(&events, &[], DAY, START);
    for workers in [1, 3] {
        assert_eq!(observed(&dataflow(workers, &updates, &p), as_of), expected);
    }
    // Opting back in at the same time as the opt-out: the opt-in wins, 4 is a neighbour again.
    events.push(Event::new(UserId(4), START + 3 * DAY, "opt_in"));
    let back = oracle(&p, &events, START + 3 * DAY);
    assert!(back.similarity.contains_key(&(UserId(4), UserId(3))));
    let (updates, as_of, _) = schedule(&events, &[], DAY, START);
    assert_eq!(observed(&dataflow(3, &updates, &p), as_of), back);
}

#[test]
fn capped_items_make_no_pairs_but_count_in_sizes() {
    // Item "x" has 3 users; with cap 2 it makes no pair, so only "y" links 1 and 2.
    let events = vec![
        rate(1, 0, "x", 5),
        rate(2, 0, "x", 5),
        rate(3, 0, "x", 5),
        rate(1, 0, "y", 5),
        rate(2, 0, "y", 5),
    ];
    let mut p = params(5, 2, 3, None, 0, false);
    p.rec.catalog = None;
    let expected = oracle(&p, &events, START);
    assert_eq!(
        expected.similarity,
        BTreeMap::from([
            ((UserId(1), UserId(2)), cosine_fixed(1, 2, 2)),
            ((UserId(2), UserId(1)), cosine_fixed(1, 2, 2)),
        ])
    );
    let (updates, as_of, _) = schedule(&events, &[], DAY, START);
    assert_eq!(observed(&dataflow(2, &updates, &p), as_of), expected);
}
