//! The segment views agree with plain batch oracles (written from the definitions in DESIGN
//! "Views") at the final as-of time, on random streams with random forgets, on 1 and 3 workers;
//! plus edge cases: percentiles over one user and over ties, membership changed only by time
//! passing, and a rule's `without` event leaving the window.

mod common;

use behave::event::{Event, Sym, UserId, Value};
use behave::views::segments::{
    all_members, segment_sizes, Dormant, Metric, Percentile, Rule, Segment,
};
use common::dataflow::{at, inserts, run_view_ticked, schedule, Update};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;
const START: i64 = 1_701_388_800; // 2023-12-01T00:00:00Z

// ---------------------------------------------------------------------------------------------
// Harness: feed updates through a dataflow on `workers` workers and capture its output.

// ---------------------------------------------------------------------------------------------
// Oracles: the definitions, literally.

fn in_window(e: &Event, as_of: i64, within: i64) -> bool {
    as_of - within < e.time && e.time <= as_of
}

fn oracle_rule(events: &[Event], rule: &Rule, as_of: i64) -> BTreeSet<UserId> {
    let mut counts: BTreeMap<UserId, u64> = BTreeMap::new();
    for e in events {
        let filters_hold = rule
            .filters
            .iter()
            .all(|(name, value)| e.props.iter().any(|(n, v)| n == name && v == value));
        if e.kind == rule.event && filters_hold && in_window(e, as_of, rule.within) {
            *counts.entry(e.user).or_insert(0) += 1;
        }
    }
    let excluded: BTreeSet<UserId> = events
        .iter()
        .filter(|e| Some(e.kind) == rule.without && in_window(e, as_of, rule.within))
        .map(|e| e.user)
        .collect();
    counts
        .into_iter()
        .filter(|(u, n)| *n >= rule.at_least.max(1) && !excluded.contains(u))
        .map(|(u, _)| u)
        .collect()
}

fn oracle_percentile(events: &[Event], p: &Percentile, as_of: i64) -> BTreeSet<UserId> {
    // The metric of every user with a counted event in the window.
    let mut counts: BTreeMap<UserId, i64> = BTreeMap::new();
    for e in events {
        let counted = p.event.is_none_or(|kind| e.kind == kind);
        if counted && in_window(e, as_of, p.within) {
            let add = match p.metric {
                Metric::Count => 1,
                Metric::Value => e.value.map_or(0, |v| v.0),
            };
            *counts.entry(e.user).or_insert(0) += add;
        }
    }
    if counts.is_empty() {
        return BTreeSet::new();
    }
    let mut sorted: Vec<i64> = counts.values().copied().collect();
    sorted.sort();
    let n = sorted.len() as u64;
    // Nearest rank: ceil(P/100 * n), 1-based.
    let rank = (u64::from(p.percentile) * n).div_ceil(100);
    let threshold = sorted[rank as usize - 1];
    counts
        .into_iter()
        .filter(|(_, c)| *c >= threshold)
        .map(|(u, _)| u)
        .collect()
}

fn oracle_dormant(events: &[Event], d: &Dormant, as_of: i64) -> BTreeSet<UserId> {
    let seen: BTreeSet<UserId> = events
        .iter()
        .filter(|e| e.time <= as_of)
        .map(|e| e.user)
        .collect();
    let active: BTreeSet<UserId> = events
        .iter()
        .filter(|e| in_window(e, as_of, d.within))
        .map(|e| e.user)
        .collect();
    seen.difference(&active).copied().collect()
}

// ---------------------------------------------------------------------------------------------
// Dataflow under test: all segments, membership and sizes in one dataflow.

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Out {
    Member(Sym, UserId),
    Size(Sym, u64),
}

fn segments_dataflow(
    workers: usize,
    updates: &[Update],
    segments: Vec<Segment>,
) -> Vec<(Out, u64, isize)> {
    segments_dataflow_ticked(workers, updates, None, segments)
}

/// The segments dataflow, with windows expiring at ticks at every update time and `as_of` when
/// `ticks_until` is given.
fn segments_dataflow_ticked(
    workers: usize,
    updates: &[Update],
    ticks_until: Option<u64>,
    segments: Vec<Segment>,
) -> Vec<(Out, u64, isize)> {
    run_view_ticked(workers, updates, ticks_until, move |events, expiry_at| {
        let members = all_members(events, &segments, &expiry_at);
        let sizes = segment_sizes(members.clone()).map(|(s, n)| Out::Size(s, n));
        members.map(|(s, u)| Out::Member(s, u)).concat(sizes)
    })
}

/// Membership of every segment at `as_of`, checking each multiplicity is 1.
fn members_at(out: &[(Out, u64, isize)], as_of: i64) -> BTreeMap<Sym, BTreeSet<UserId>> {
    let mut members: BTreeMap<Sym, BTreeSet<UserId>> = BTreeMap::new();
    for (datum, mult) in at(out, as_of as u64) {
        assert_eq!(mult, 1, "{datum:?} has multiplicity {mult}");
        if let Out::Member(s, u) = datum {
            members.entry(s).or_default().insert(u);
        }
    }
    members
}

fn sizes_at(out: &[(Out, u64, isize)], as_of: i64) -> BTreeMap<Sym, u64> {
    at(out, as_of as u64)
        .into_iter()
        .filter_map(|(datum, mult)| match datum {
            Out::Size(s, n) => {
                assert_eq!(mult, 1);
                Some((s, n))
            }
            Out::Member(..) => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Random streams.

fn arb_event() -> impl Strategy<Value = Event> {
    (
        0u64..10,
        0i64..(90 * DAY),
        0usize..3,
        0usize..3,
        prop::option::of(-2i64..50),
    )
        .prop_map(|(user, offset, kind, plan, value)| {
            let mut e = Event::new(
                UserId(user),
                START + offset - offset % 900,
                ["view", "click", "buy"][kind],
            );
            if plan > 0 {
                e.props = vec![(Sym::of("plan"), Sym::of(["free", "pro"][plan - 1]))];
            }
            // Values in halves, negative ones (refunds) and ties included.
            e.value = value.map(|v| Value(v * Value::SCALE / 2));
            e
        })
}

fn arb_within() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(HOUR),
        Just(DAY),
        Just(7 * DAY),
        Just(30 * DAY),
        1i64..(60 * DAY)
    ]
}

fn arb_segments() -> impl Strategy<Value = Vec<Segment>> {
    // Twice over (renamed) or not: more segments than a user's state holds inline.
    (arb_three_segments(), any::<bool>()).prop_map(|(mut segments, twice)| {
        if twice {
            let copies: Vec<Segment> = segments.iter().map(renamed).collect();
            segments.extend(copies);
        }
        segments
    })
}

/// The segment under the name `<name>2`.
fn renamed(segment: &Segment) -> Segment {
    let mut segment = segment.clone();
    match &mut segment {
        Segment::Rule(r) => r.name.push('2'),
        Segment::Percentile(p) => p.name.push('2'),
        Segment::Dormant(d) => d.name.push('2'),
    }
    segment
}

/// A rule, a percentile and a dormant segment.
fn arb_three_segments() -> impl Strategy<Value = Vec<Segment>> {
    (
        0usize..3,
        prop::option::of(0usize..2),
        0u64..4,
        arb_within(),
        prop::option::of(0usize..3),
        (
            1u32..=100,
            arb_within(),
            prop::option::of(0usize..3),
            prop_oneof![Just(Metric::Count), Just(Metric::Value)],
        ),
        arb_within(),
    )
        .prop_map(
            |(
                kind,
                plan,
                at_least,
                rule_within,
                without,
                (p, p_within, p_event, metric),
                d_within,
            )| {
                vec![
                    Segment::Rule(Rule {
                        name: "rule".into(),
                        event: Sym::of(["view", "click", "buy"][kind]),
                        filters: plan
                            .map(|i| vec![(Sym::of("plan"), Sym::of(["free", "pro"][i]))])
                            .unwrap_or_default(),
                        at_least,
                        within: rule_within,
                        without: without.map(|i| Sym::of(["view", "click", "buy"][i])),
                    }),
                    Segment::Percentile(Percentile {
                        name: "top".into(),
                        percentile: p,
                        within: p_within,
                        event: p_event.map(|i| Sym::of(["view", "click", "buy"][i])),
                        metric,
                    }),
                    Segment::Dormant(Dormant {
                        name: "dormant".into(),
                        within: d_within,
                    }),
                ]
            },
        )
}

fn oracle_members(
    events: &[Event],
    segments: &[Segment],
    as_of: i64,
) -> BTreeMap<Sym, BTreeSet<UserId>> {
    let mut out = BTreeMap::new();
    for segment in segments {
        let users = match segment {
            Segment::Rule(r) => oracle_rule(events, r, as_of),
            Segment::Percentile(p) => oracle_percentile(events, p, as_of),
            Segment::Dormant(d) => oracle_dormant(events, d, as_of),
        };
        if !users.is_empty() {
            out.insert(segment.key(), users);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20, .. ProptestConfig::default() })]

    #[test]
    fn segments_match_oracle_with_forgets(
        events in proptest::collection::vec(arb_event(), 0..60),
        forgets in proptest::collection::vec((0u64..12, 0i64..(100 * DAY)), 0..3),
        segments in arb_segments(),
        tick in prop_oneof![Just(1i64), Just(HOUR), Just(DAY)],
        workers in prop_oneof![Just(1usize), Just(3)],
        ticked in any::<bool>(),
    ) {
        let forgets: Vec<(u64, i64)> = forgets.into_iter().map(|(u, t)| (u, START + t)).collect();
        let (updates, as_of, survivors) = schedule(&events, &forgets, tick, START);
        let ticks_until = ticked.then_some(as_of as u64);
        let out = segments_dataflow_ticked(workers, &updates, ticks_until, segments.clone());
        let expected = oracle_members(&survivors, &segments, as_of);
        prop_assert_eq!(&members_at(&out, as_of), &expected);
        let expected_sizes: BTreeMap<Sym, u64> =
            expected.iter().map(|(s, users)| (*s, users.len() as u64)).collect();
        prop_assert_eq!(sizes_at(&out, as_of), expected_sizes);
        // Exact at every epoch, not only at the end: the events visible there are the input
        // accumulated up to it.
        let epochs: BTreeSet<u64> = updates.iter().map(|u| u.1).collect();
        for epoch in epochs {
            let visible: Vec<Event> = at(&updates.iter().map(|(e, t, r)| (e.clone(), *t, *r)).collect::<Vec<_>>(), epoch)
                .into_iter()
                .flat_map(|(e, n)| std::iter::repeat_n(e, n.max(0) as usize))
                .collect();
            let expected = oracle_members(&visible, &segments, epoch as i64);
            prop_assert_eq!(&members_at(&out, epoch as i64), &expected, "at {}", epoch);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Edge cases.

fn top(percentile: u32) -> Segment {
    Segment::Percentile(Percentile {
        name: format!("p{percentile}"),
        percentile,
        within: 30 * DAY,
        event: None,
        metric: Metric::Count,
    })
}

#[test]
fn oracle_itself_follows_the_definitions() {
    // Counts 1, 2, 2, 2, 5: n = 5; P50 has rank 3, so threshold 2.
    let mut events = Vec::new();
    for (user, count) in [(1u64, 1), (2, 2), (3, 2), (4, 2), (5, 5)] {
        for i in 0..count {
            events.push(Event::new(UserId(user), START + i, "view"));
        }
    }
    let p = Percentile {
        name: "p".into(),
        percentile: 50,
        within: DAY,
        event: None,
        metric: Metric::Count,
    };
    let members = oracle_percentile(&events, &p, START + 10);
    assert_eq!(members, [2, 3, 4, 5].map(UserId).into_iter().collect());
}

#[test]
fn percentile_over_a_single_user() {
    let events: Vec<Event> = (0..3)
        .map(|i| Event::new(UserId(42), START + i * HOUR, "view"))
        .collect();
    let segments = vec![top(1), top(50), top(100)];
    let as_of = START + 2 * HOUR;
    for workers in [1, 3] {
        let out = segments_dataflow(workers, &inserts(&events), segments.clone());
        let members = members_at(&out, as_of);
        assert_eq!(members.len(), 3, "every percentile has the user");
        for segment in &segments {
            assert_eq!(
                members[&segment.key()],
                BTreeSet::from([UserId(42)]),
                "{}",
                segment.name()
            );
        }
        let sizes = sizes_at(&out, as_of);
        assert!(sizes.values().all(|n| *n == 1));
    }
}

#[test]
fn ties_at_the_percentile_are_all_included() {
    // Counts: user 1 -> 1, users 2, 3, 4 -> 2 (tied), user 5 -> 5.
    let mut events = Vec::new();
    for (user, count) in [(1u64, 1), (2, 2), (3, 2), (4, 2), (5, 5)] {
        for i in 0..count {
            events.push(Event::new(UserId(user), START + i * 60, "view"));
        }
    }
    let as_of = START + DAY;
    let cases: [(u32, &[u64]); 6] = [
        (20, &[1, 2, 3, 4, 5]), // rank 1: threshold 1
        (21, &[2, 3, 4, 5]),    // rank ceil(1.05) = 2: threshold 2, all three ties
        (50, &[2, 3, 4, 5]),    // rank 3
        (80, &[2, 3, 4, 5]),    // rank 4: still a tied 2
        (81, &[5]),             // rank ceil(4.05) = 5: threshold 5
        (100, &[5]),
    ];
    let segments: Vec<Segment> = cases.iter().map(|(p, _)| top(*p)).collect();
    for workers in [1, 3] {
        let out = segments_dataflow(workers, &inserts(&events), segments.clone());
        let members = members_at(&out, as_of);
        let sizes = sizes_at(&out, as_of);
        for (p, users) in cases {
            let key = top(p).key();
            let expected: BTreeSet<UserId> = users.iter().copied().map(UserId).collect();
            assert_eq!(members[&key], expected, "P{p}");
            assert_eq!(sizes[&key], users.len() as u64, "P{p}");
        }
    }
}

#[test]
fn membership_changes_when_only_time_passes() {
    let rule = Segment::Rule(Rule {
        name: "twice".into(),
        event: Sym::of("view"),
        filters: vec![],
        at_least: 2,
        within: HOUR,
        without: None,
    });
    let dormant = Segment::Dormant(Dormant {
        name: "dormant".into(),
        within: HOUR,
    });
    let events = vec![
        Event::new(UserId(1), START, "view"),
        Event::new(UserId(1), START + 10, "view"),
        // Another user keeps the stream going, so "time passes" in the input.
        Event::new(UserId(2), START + 2 * HOUR, "click"),
    ];
    for workers in [1, 3] {
        let out = segments_dataflow(
            workers,
            &inserts(&events),
            vec![rule.clone(), dormant.clone()],
        );
        let rule_of = |as_of: i64| members_at(&out, as_of).get(&rule.key()).cloned();
        let dormant_of = |as_of: i64| members_at(&out, as_of).get(&dormant.key()).cloned();
        let one = Some(BTreeSet::from([UserId(1)]));
        assert_eq!(rule_of(START + 10), one);
        assert_eq!(dormant_of(START + 10), None);
        // The first view leaves the window (L - 1h, L] exactly at START + 1h.
        assert_eq!(rule_of(START + HOUR - 1), one);
        assert_eq!(rule_of(START + HOUR), None);
        // The last view leaves at START + 1h + 10 s: dormant from then on, with no new event.
        assert_eq!(dormant_of(START + HOUR + 9), None);
        assert_eq!(dormant_of(START + HOUR + 10), one);
        assert_eq!(dormant_of(START + 2 * HOUR), one);
        // The exits are emitted at exactly those times.
        let member = Out::Member(rule.key(), UserId(1));
        let exits: Vec<u64> = out
            .iter()
            .filter(|(d, _, r)| *d == member && *r < 0)
            .map(|(_, t, _)| *t)
            .collect();
        assert_eq!(exits, vec![(START + HOUR) as u64]);
        // User 2 is not dormant while their click is in the window, nor in the rule.
        assert_eq!(rule_of(START + 2 * HOUR), None);
        assert_eq!(
            members_at(&out, START + 3 * HOUR)[&dormant.key()],
            BTreeSet::from([UserId(1), UserId(2)])
        );
    }
}

#[test]
fn a_purchase_leaving_the_window_makes_an_abandoner_again() {
    let abandoners = Segment::Rule(Rule {
        name: "abandoners".into(),
        event: Sym::of("add_to_cart"),
        filters: vec![],
        at_least: 1,
        within: DAY,
        without: Some(Sym::of("purchase")),
    });
    let events = vec![
        Event::new(UserId(1), START, "add_to_cart"),
        Event::new(UserId(1), START + HOUR, "purchase"),
        Event::new(UserId(1), START + 2 * HOUR, "add_to_cart"),
        // Another user keeps the stream going past the purchase's expiry.
        Event::new(UserId(2), START + 2 * DAY, "view"),
    ];
    for workers in [1, 3] {
        let out = segments_dataflow(workers, &inserts(&events), vec![abandoners.clone()]);
        let of = |as_of: i64| members_at(&out, as_of).get(&abandoners.key()).cloned();
        let one = Some(BTreeSet::from([UserId(1)]));
        assert_eq!(of(START), one, "cart add, no purchase yet");
        assert_eq!(of(START + HOUR), None, "the purchase excludes");
        assert_eq!(
            of(START + 2 * HOUR),
            None,
            "a new cart add does not undo the purchase"
        );
        // The purchase leaves (T - 1d, T] at START + 1h + 1d; the second cart add is still in.
        assert_eq!(of(START + DAY + HOUR - 1), None);
        assert_eq!(
            of(START + DAY + HOUR),
            one,
            "an abandoner again, with no new event"
        );
        // And out once the second cart add leaves too.
        assert_eq!(of(START + DAY + 2 * HOUR - 1), one);
        assert_eq!(of(START + DAY + 2 * HOUR), None);
        assert_eq!(
            oracle_members(
                &events,
                std::slice::from_ref(&abandoners),
                START + DAY + HOUR
            )
            .get(&abandoners.key())
            .cloned(),
            one
        );
        // The re-entry is emitted at exactly the purchase's expiry.
        let member = Out::Member(abandoners.key(), UserId(1));
        let mut net: BTreeMap<u64, isize> = BTreeMap::new();
        for (d, t, r) in &out {
            if *d == member {
                *net.entry(*t).or_default() += r;
            }
        }
        net.retain(|_, r| *r != 0);
        assert_eq!(
            net.into_iter().collect::<Vec<_>>(),
            vec![
                (START as u64, 1),
                ((START + HOUR) as u64, -1),
                ((START + DAY + HOUR) as u64, 1),
                ((START + DAY + 2 * HOUR) as u64, -1),
            ]
        );
    }
}

#[test]
fn forgetting_a_member_removes_them_from_every_segment() {
    let events = vec![
        Event::new(UserId(1), START, "buy"),
        Event::new(UserId(2), START + 60, "buy"),
        Event::new(UserId(2), START + 120, "buy"),
    ];
    let segments = vec![
        Segment::Rule(Rule {
            name: "buyer".into(),
            event: Sym::of("buy"),
            filters: vec![],
            at_least: 1,
            within: DAY,
            without: None,
        }),
        top(100),
        Segment::Dormant(Dormant {
            name: "dormant".into(),
            within: 30,
        }),
    ];
    let (updates, as_of, survivors) = schedule(&events, &[(2, START + 3_600)], 60, START);
    assert_eq!(survivors.len(), 1);
    let out = segments_dataflow(3, &updates, segments.clone());
    let members = members_at(&out, as_of);
    let only_one = BTreeSet::from([UserId(1)]);
    // Before the forget user 2 was the top user; now user 1 is everything.
    assert_eq!(
        members_at(&out, START + 120)[&top(100).key()],
        BTreeSet::from([UserId(2)])
    );
    for segment in &segments {
        assert_eq!(members[&segment.key()], only_one, "{}", segment.name());
    }
}

#[test]
fn top_spenders_rank_by_the_sum_of_one_event_type() {
    // Purchases worth 10, 20, 20 and 100 (users 1..=4); user 5 only browses, a lot.
    let mut events = Vec::new();
    for (user, spend) in [(1u64, 10i64), (2, 20), (3, 20), (4, 100)] {
        let mut e = Event::new(UserId(user), START + user as i64, "buy");
        e.value = Some(Value(spend * Value::SCALE));
        events.push(e);
    }
    for i in 0..50 {
        events.push(Event::new(UserId(5), START + 10 + i, "view"));
    }
    let spenders = Segment::Percentile(Percentile {
        name: "top_spenders".into(),
        percentile: 75,
        within: DAY,
        event: Some(Sym::of("buy")),
        metric: Metric::Value,
    });
    // Buyers only: n = 4, rank ceil(0.75 * 4) = 3 in [10, 20, 20, 100], threshold 20.
    let expected = BTreeSet::from([UserId(2), UserId(3), UserId(4)]);
    let as_of = START + 100;
    assert_eq!(
        oracle_members(&events, std::slice::from_ref(&spenders), as_of)[&spenders.key()],
        expected
    );
    for workers in [1, 3] {
        let out = segments_dataflow_ticked(
            workers,
            &inserts(&events),
            Some(as_of as u64),
            vec![spenders.clone()],
        );
        assert_eq!(members_at(&out, as_of)[&spenders.key()], expected);
        // A day later every purchase has left the window, and nobody is a member.
        let later = segments_dataflow_ticked(
            workers,
            &inserts(&events),
            Some((START + DAY + 50) as u64),
            vec![spenders.clone()],
        );
        assert!(!members_at(&later, START + DAY + 50).contains_key(&spenders.key()));
    }
}
