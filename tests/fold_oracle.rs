//! `fold_by_key` against a plain batch fold: random updates at random (also future) times, in
//! several small batches per time and out of time order, retractions ahead of insertions, on 1
//! and 3 workers. At every time, the accumulated output must equal the rows of the state folded
//! from every update at or before that time.

use behave::views::fold::fold_by_key;
use differential_dataflow::input::InputSession;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// `(key, value)` updated at `time` by `diff`.
type Update = ((u8, u8), u64, isize);
type Row = (u8, u8, isize);

/// A key's state: multiplicity per value.
type State = BTreeMap<u8, isize>;

fn update(state: &mut State, value: &u8, diff: isize) {
    let count = state.entry(*value).or_insert(0);
    *count += diff;
    if *count == 0 {
        state.remove(value);
    }
}

/// The rows of a key: each value present with a positive count, with the count.
fn rows(key: &u8, state: &State, rows: &mut Vec<Row>) {
    rows.extend(
        state
            .iter()
            .filter(|(_, count)| **count > 0)
            .map(|(value, count)| (*key, *value, *count)),
    );
}

/// Runs the fold on `workers` workers. Worker `i` sends the updates with index `i` modulo the
/// peers, each at the input time `sent`, so updates for later times arrive early.
fn run(workers: usize, updates: &[(u64, Update)]) -> Vec<(Row, u64, isize)> {
    let updates = Arc::new(updates.to_vec());
    let captured = Arc::new(Mutex::new(Vec::new()));
    let sink = captured.clone();
    timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let mut input: InputSession<u64, (u8, u8), isize> = InputSession::new();
        let sink = sink.clone();
        worker.dataflow::<u64, _, _>(|scope| {
            fold_by_key(input.to_collection(scope), "Test", update, rows)
                .inspect(move |u| sink.lock().unwrap().push(*u));
        });
        for (i, (sent, (data, time, diff))) in updates.iter().enumerate() {
            if *sent > *input.time() {
                input.advance_to(*sent);
                input.flush();
                worker.step();
            }
            if i % peers == index {
                input.update_at(*data, (*time).max(*sent), *diff);
                // Small batches: several per time.
                if i % 3 == 0 {
                    input.flush();
                    worker.step();
                }
            }
        }
        input.close();
        while worker.step() {}
    })
    .expect("timely runs");
    let out = captured.lock().unwrap().clone();
    out
}

/// The rows at `as_of` from a plain fold of every update at or before it.
fn oracle(updates: &[(u64, Update)], as_of: u64) -> BTreeMap<Row, isize> {
    let mut states: BTreeMap<u8, State> = BTreeMap::new();
    for (sent, ((key, value), time, diff)) in updates {
        if (*time).max(*sent) <= as_of {
            update(states.entry(*key).or_default(), value, *diff);
        }
    }
    let mut out = Vec::new();
    for (key, state) in &states {
        rows(key, state, &mut out);
    }
    out.into_iter().map(|row| (row, 1)).collect()
}

fn accumulate(output: &[(Row, u64, isize)], as_of: u64) -> BTreeMap<Row, isize> {
    let mut at: BTreeMap<Row, isize> = BTreeMap::new();
    for (row, time, diff) in output {
        if *time <= as_of {
            *at.entry(*row).or_insert(0) += diff;
        }
    }
    at.retain(|_, diff| *diff != 0);
    at
}

fn updates() -> impl Strategy<Value = Vec<(u64, Update)>> {
    prop::collection::vec(
        (
            0u64..6,
            0u8..4,
            0u8..3,
            0u64..4,
            prop_oneof![3 => Just(1isize), 1 => Just(-1)],
        ),
        0..60,
    )
    .prop_map(|raw| {
        let mut updates: Vec<(u64, Update)> = raw
            .into_iter()
            .map(|(sent, key, value, later, diff)| (sent, ((key, value), sent + later, diff)))
            .collect();
        updates.sort_by_key(|(sent, _)| *sent);
        updates
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn fold_matches_a_batch_fold(updates in updates(), workers in prop_oneof![Just(1usize), Just(3)]) {
        let output = run(workers, &updates);
        for as_of in 0..10 {
            prop_assert_eq!(accumulate(&output, as_of), oracle(&updates, as_of), "as of {}", as_of);
        }
    }
}
