//! `reduce_in_place` produces exactly what differential's `reduce` produces, update for update
//! (consolidated changes at each time), on random updates with retractions to zero, values
//! whose multiplicities go up and down, and several keys, on 1 and 3 workers; its state is
//! empty once every update is retracted.

use behave::views::in_place::reduce_in_place;
use differential_dataflow::input::InputSession;
use differential_dataflow::VecCollection;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

type Out = Vec<((u8, (u8, i64)), u64, isize)>;

/// The logic under test: the two values with the largest multiplicity-weighted value, ties by
/// the smaller value, each with its weight (order-independent, like `rank_user`).
fn top_two(values: &[(u8, isize)]) -> Vec<(u8, i64)> {
    let mut weighted: Vec<(u8, i64)> = values
        .iter()
        .filter(|(_, r)| *r > 0)
        .map(|(v, r)| (*v, i64::from(*v) * *r as i64))
        .collect();
    weighted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    weighted.truncate(2);
    weighted
}

fn run(workers: usize, updates: &[(u8, u8, u64, isize)], in_place: bool) -> (Out, bool) {
    let updates = Arc::new(updates.to_vec());
    let captured = Arc::new(Mutex::new(Vec::new()));
    let emptied = Arc::new(Mutex::new(true));
    let (sink, empty) = (captured.clone(), emptied.clone());
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let mut input: InputSession<u64, (u8, u8), isize> = InputSession::new();
        let sink = sink.clone();
        let state = worker.dataflow::<u64, _, _>(|scope| {
            let collection = input.to_collection(scope);
            let (out, state): (VecCollection<'_, u64, (u8, (u8, i64)), isize>, _) = if in_place {
                let (out, state) = reduce_in_place(collection, "Test", |_k, v| top_two(v));
                (out, Some(state))
            } else {
                let out = collection.reduce(
                    |_k, input: &[(&u8, isize)], output: &mut Vec<((u8, i64), isize)>| {
                        let values: Vec<(u8, isize)> =
                            input.iter().map(|(v, r)| (**v, *r)).collect();
                        output.extend(top_two(&values).into_iter().map(|o| (o, 1)));
                    },
                );
                (out, None)
            };
            out.inspect(move |u| sink.lock().unwrap().push(*u));
            state
        });
        for (i, &(key, value, time, diff)) in updates.iter().enumerate() {
            if time > *input.time() {
                input.advance_to(time);
                input.flush();
                worker.step();
            }
            if i % peers == index {
                input.update((key, value), diff);
            }
        }
        input.close();
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

/// Updates consolidated per (record, time), zeros dropped.
fn consolidated(out: Out) -> BTreeMap<(u64, (u8, (u8, i64))), isize> {
    let mut map = BTreeMap::new();
    for (d, t, r) in out {
        *map.entry((t, d)).or_insert(0) += r;
    }
    map.retain(|_, r| *r != 0);
    map
}

fn check(steps: Vec<(u8, u8, u64, isize)>) {
    // Everything inserted is retracted at the end.
    let mut updates = steps;
    updates.sort_by_key(|u| u.2);
    let end = updates.last().map_or(0, |u| u.2 + 1);
    let undo: Vec<_> = updates
        .iter()
        .map(|&(k, v, _, r)| (k, v, end, -r))
        .collect();
    updates.extend(undo);
    for workers in [1, 3] {
        let (expected, _) = run(workers, &updates, false);
        let (seen, emptied) = run(workers, &updates, true);
        // The in-place output is consolidated as emitted.
        let raw = seen.len();
        let seen = consolidated(seen);
        assert_eq!(seen.len(), raw, "{workers} workers: unconsolidated output");
        assert_eq!(seen, consolidated(expected), "{workers} workers");
        assert!(emptied, "state left after retracting everything");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn in_place_equals_reduce(
        steps in prop::collection::vec((0u8..3, 0u8..6, 0u64..6, prop_oneof![Just(1isize), Just(-1), Just(2)]), 0..30),
    ) {
        check(steps);
    }
}
