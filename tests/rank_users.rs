//! `rank_users` (neighbours' items summed in place) produces exactly what the differential
//! formulation produces, update for update: the join of neighbour weights with item sets,
//! summed per (user, item) and ranked per user by `rank_user` with differential's `reduce`.
//! Random neighbour records, items, dismissals and popular items, inserted and retracted at
//! random times (everything retracted at the end), 1 and 3 workers, with and without a content
//! term; the state must be empty at the end.

use behave::event::{Sym, UserId};
use behave::views::rank::{rank_users, ToRank};
use behave::views::recommend::{rank_user, Catalog, RankInput, RecommendParams, Recommendation};
use differential_dataflow::input::InputSession;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// One update: an input of a user (`ToRank`) or an item of a user, at a time, with a diff.
#[derive(Clone, Debug)]
enum Step {
    ToRank(u64, ToRank, u64, isize),
    Item(u64, Sym, u64, isize),
}

type Out = Vec<((UserId, Recommendation), u64, isize)>;

fn params(content: bool, n: usize) -> RecommendParams {
    RecommendParams {
        n,
        dismiss: None,
        popular_within: None,
        catalog: Some(Arc::new(Catalog::from_names([
            ("i0", vec!["a"]),
            ("i1", vec!["a", "b"]),
            ("i2", vec!["b"]),
        ]))),
        content_weight: if content { 2_000_000 } else { 0 },
    }
}

fn run(workers: usize, steps: &[Step], p: RecommendParams, in_place: bool) -> (Out, bool) {
    let steps = Arc::new(steps.to_vec());
    let captured = Arc::new(Mutex::new(Vec::new()));
    let emptied = Arc::new(Mutex::new(true));
    let (sink, empty) = (captured.clone(), emptied.clone());
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let mut to_rank: InputSession<u64, (UserId, ToRank), isize> = InputSession::new();
        let mut items: InputSession<u64, (UserId, Sym), isize> = InputSession::new();
        let sink = sink.clone();
        let p = p.clone();
        let state = worker.dataflow::<u64, _, _>(|scope| {
            let inputs = to_rank.to_collection(scope);
            let own = items.to_collection(scope);
            if in_place {
                let (out, state) = rank_users(inputs, own, &p);
                out.inspect(move |u| sink.lock().unwrap().push(*u));
                Some(state)
            } else {
                let weights = inputs.clone().flat_map(|(u, t)| match t {
                    ToRank::Neighbour(v, w) => Some((v, (u, w))),
                    ToRank::Input(_) => None,
                });
                let via = weights
                    .join_map(own.clone(), |_v, &(u, w), &item| ((u, item), w))
                    .explode(|((u, item), w)| Some(((u, RankInput::Via(item, 1)), w as isize)));
                let plain = inputs.flat_map(|(u, t)| match t {
                    ToRank::Input(r) => Some((u, r)),
                    ToRank::Neighbour(..) => None,
                });
                plain
                    .concat(via)
                    .reduce(
                        move |_u,
                              input: &[(&RankInput, isize)],
                              output: &mut Vec<(Recommendation, isize)>| {
                            let input: Vec<(RankInput, isize)> =
                                input.iter().map(|(v, r)| (**v, *r)).collect();
                            output.extend(rank_user(&input, &p).into_iter().map(|r| (r, 1)));
                        },
                    )
                    .inspect(move |u| sink.lock().unwrap().push(*u));
                None
            }
        });
        for (i, step) in steps.iter().enumerate() {
            let time = match step {
                Step::ToRank(_, _, t, _) | Step::Item(_, _, t, _) => *t,
            };
            if time > *to_rank.time() {
                to_rank.advance_to(time);
                items.advance_to(time);
                to_rank.flush();
                items.flush();
                worker.step();
            }
            if i % peers != index {
                continue;
            }
            match step {
                Step::ToRank(u, t, _, d) => to_rank.update((UserId(*u), *t), *d),
                Step::Item(u, item, _, d) => items.update((UserId(*u), *item), *d),
            }
        }
        to_rank.close();
        items.close();
        while worker.step() {}
        if state.is_some_and(|s| !s.is_empty()) {
            *empty.lock().unwrap() = false;
        }
    })
    .expect("timely runs");
    let out = captured.lock().unwrap().clone();
    let emptied = *emptied.lock().unwrap();
    (out, emptied)
}

fn consolidated(out: Out) -> BTreeMap<(u64, (UserId, Recommendation)), isize> {
    let mut map = BTreeMap::new();
    for (d, t, r) in out {
        *map.entry((t, d)).or_insert(0) += r;
    }
    map.retain(|_, r| *r != 0);
    map
}

fn arb_step() -> impl Strategy<Value = Step> {
    let item = (0u8..12).prop_map(|i| Sym::of(&format!("i{i}")));
    let time = 0u64..5;
    prop_oneof![
        3 => (0u64..4, 0u64..4, 1i64..4, time.clone())
            .prop_map(|(u, v, w, t)| Step::ToRank(u, ToRank::Neighbour(UserId(v), w * 1_000), t, 1)),
        3 => (0u64..4, item.clone(), time.clone()).prop_map(|(u, i, t)| Step::Item(u, i, t, 1)),
        1 => (0u64..4, item.clone(), time.clone())
            .prop_map(|(u, i, t)| Step::ToRank(u, ToRank::Input(RankInput::Own(i)), t, 1)),
        1 => (0u64..4, item.clone(), time.clone())
            .prop_map(|(u, i, t)| Step::ToRank(u, ToRank::Input(RankInput::Dismissed(i)), t, 1)),
        1 => (0u64..4, 0u32..3, item, time)
            .prop_map(|(u, r, i, t)| Step::ToRank(u, ToRank::Input(RankInput::Popular(r, i, 5)), t, 1)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn in_place_ranking_equals_join_and_reduce(
        steps in prop::collection::vec(arb_step(), 0..40),
        retract in prop::collection::vec(any::<bool>(), 40),
        content in any::<bool>(),
        n in 1usize..4,
    ) {
        // Some updates are retracted at a later time; everything is retracted at the end.
        let mut all: Vec<Step> = steps.clone();
        for (step, undo) in steps.iter().zip(retract) {
            if undo {
                all.push(match step.clone() {
                    Step::ToRank(u, x, t, d) => Step::ToRank(u, x, t + 2, -d),
                    Step::Item(u, i, t, d) => Step::Item(u, i, t + 2, -d),
                });
            }
        }
        all.sort_by_key(|s| match s { Step::ToRank(_, _, t, _) | Step::Item(_, _, t, _) => *t });
        let mut net: BTreeMap<String, (Step, isize)> = BTreeMap::new();
        for s in &all {
            let (key, d) = match s {
                Step::ToRank(u, x, _, d) => (format!("r{u}{x:?}"), *d),
                Step::Item(u, i, _, d) => (format!("i{u}{i:?}"), *d),
            };
            net.entry(key).or_insert((s.clone(), 0)).1 += d;
        }
        for (s, d) in net.into_values() {
            if d != 0 {
                all.push(match s {
                    Step::ToRank(u, x, _, _) => Step::ToRank(u, x, 10, -d),
                    Step::Item(u, i, _, _) => Step::Item(u, i, 10, -d),
                });
            }
        }
        for workers in [1, 3] {
            let (expected, _) = run(workers, &all, params(content, n), false);
            let (seen, emptied) = run(workers, &all, params(content, n), true);
            let raw = seen.len();
            let seen = consolidated(seen);
            prop_assert_eq!(seen.len(), raw, "unconsolidated output");
            prop_assert_eq!(seen, consolidated(expected), "{} workers", workers);
            prop_assert!(emptied, "state left after retracting everything");
        }
    }
}

/// A candidate that rises but still ranks after the kept candidates must stay out of them, and
/// when the kept ones leave, the candidates behind them are ranked again. With `n = 1` (three
/// kept): user 0 follows v1 (five items, tied, so ranked by symbol); v1 loses its first item;
/// user 0 follows v2 (i9, lower); v1 loses its second and third: the top is v1's fourth item,
/// not i9.
#[test]
fn a_lower_candidate_does_not_pass_unseen_ones() {
    let mut tied: Vec<Sym> = (0..5).map(|i| Sym::of(&format!("i{i}"))).collect();
    tied.sort();
    let mut steps = vec![Step::ToRank(0, ToRank::Neighbour(UserId(1), 3_000), 0, 1)];
    steps.extend(tied.iter().map(|&i| Step::Item(1, i, 0, 1)));
    steps.push(Step::Item(1, tied[0], 1, -1));
    steps.push(Step::ToRank(0, ToRank::Neighbour(UserId(2), 1_000), 2, 1));
    steps.push(Step::Item(2, Sym::of("i9"), 2, 1));
    steps.extend(tied[1..3].iter().map(|&i| Step::Item(1, i, 3, -1)));
    let (expected, _) = run(1, &steps, params(false, 1), false);
    let (seen, _) = run(1, &steps, params(false, 1), true);
    let top_at_3: Vec<Sym> = consolidated(seen.clone())
        .into_iter()
        .filter(|((t, _), r)| *t == 3 && *r > 0)
        .map(|((_, (_, rec)), _)| rec.item)
        .collect();
    assert_eq!(top_at_3, vec![tied[3]]);
    assert_eq!(consolidated(seen), consolidated(expected));
}
