//! `fold_by_key` against a plain batch fold: random updates at random (also future) times, in
//! several small batches per time and out of time order, retractions ahead of insertions, on 1
//! and 3 workers. At every time, the accumulated output must equal the rows of the state folded
//! from every update at or before that time.

mod common;

use behave::views::fold::{fold_by_key, fold_passages};
use behave::views::window::{Expiry, Passage};
use common::dataflow::{capture, feed};
use differential_dataflow::input::InputSession;
use proptest::prelude::*;
use std::collections::BTreeMap;
use timely::dataflow::operators::vec::input::Handle;

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
    let updates = updates.to_vec();
    capture(workers, move |worker, sink| {
        let index = worker.index();
        let peers = worker.peers();
        let mut input: InputSession<u64, (u8, u8), isize> = InputSession::new();
        worker.dataflow::<u64, _, _>(|scope| {
            fold_by_key(input.to_collection(scope), "Test", update, rows)
                .inspect(move |u| sink.lock().unwrap().push(*u));
        });
        feed(worker, input, &updates, |i, _| i % peers == index);
    })
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

// -------------------------------------------------------------------------------------------
// `fold_passages`: the same fold over records that enter and leave two sliding windows.

/// A record: its key, event time and windows (bit 0: 5 seconds, bit 1: 20 seconds).
type Record = (u8, (i64, u8));
/// `(record, logical time, diff)` and the input time it is sent at.
type Timed = (u64, (Record, u64, isize));
/// A key's counters: records ever, records in window 0, in window 1.
type Counters = [i64; 3];
const DURATIONS: [i64; 2] = [5, 20];

fn passage_update(c: &mut Counters, &windows: &u8, passage: Passage, diff: isize) {
    let d = diff as i64;
    match passage {
        Passage::Enter => {
            c[0] += d;
            for w in 0..2 {
                if windows & (1 << w) != 0 {
                    c[1 + w] += d;
                }
            }
        }
        Passage::Leave(w) => c[1 + usize::from(w)] -= d,
    }
}

fn passage_rows(key: &u8, c: &Counters, rows: &mut Vec<(u8, Counters)>) {
    if *c != [0; 3] {
        rows.push((*key, *c));
    }
}

/// Runs `fold_passages` on `workers` workers, with a tick at every multiple of 3 (`ticked`) or
/// exact expiry.
fn run_passages(
    workers: usize,
    ticked: bool,
    updates: &[Timed],
) -> Vec<((u8, Counters), u64, isize)> {
    let updates = updates.to_vec();
    capture(workers, move |worker, sink| {
        let index = worker.index();
        let peers = worker.peers();
        let mut input: InputSession<u64, Record, isize> = InputSession::new();
        let mut ticks: Handle<u64, ()> = Handle::new();
        worker.dataflow::<u64, _, _>(|scope| {
            let expiry_at = if ticked {
                Expiry::Ticks(ticks.to_stream(scope))
            } else {
                Expiry::Exact
            };
            fold_passages(
                input.to_collection(scope),
                &DURATIONS,
                |windows: &u8| u64::from(*windows),
                &expiry_at,
                "Test",
                passage_update,
                passage_rows,
            )
            .inspect(move |u| sink.lock().unwrap().push(*u));
        });
        let advance = |to: u64,
                       input: &mut InputSession<u64, Record, isize>,
                       ticks: &mut Handle<u64, ()>,
                       worker: &mut timely::worker::Worker| {
            while *input.time() < to {
                let now = *input.time();
                if now.is_multiple_of(3) {
                    ticks.send(());
                }
                input.advance_to(now + 1);
                ticks.advance_to(now + 1);
                input.flush();
                worker.step();
            }
        };
        for (i, (sent, (record, time, diff))) in updates.iter().enumerate() {
            advance(*sent, &mut input, &mut ticks, worker);
            if i % peers == index {
                input.update_at(*record, (*time).max(*sent), *diff);
                if i % 3 == 0 {
                    input.flush();
                    worker.step();
                }
            }
        }
        advance(40, &mut input, &mut ticks, worker);
        input.close();
        drop(ticks);
        while worker.step() {}
    })
}

/// The rows at `as_of` from the definitions: a record counts in window `w` from its logical
/// time while `as_of < event time + duration`.
fn passages_oracle(updates: &[Timed], as_of: u64) -> BTreeMap<(u8, Counters), isize> {
    let mut states: BTreeMap<u8, Counters> = BTreeMap::new();
    for (sent, ((key, (event_time, windows)), time, diff)) in updates {
        if (*time).max(*sent) > as_of {
            continue;
        }
        let c = states.entry(*key).or_default();
        c[0] += *diff as i64;
        for w in 0..2 {
            if windows & (1 << w) != 0 && (as_of as i64) < event_time + DURATIONS[w] {
                c[1 + w] += *diff as i64;
            }
        }
    }
    let mut out = Vec::new();
    for (key, c) in &states {
        passage_rows(key, c, &mut out);
    }
    out.into_iter().map(|row| (row, 1)).collect()
}

fn timed_records() -> impl Strategy<Value = Vec<Timed>> {
    prop::collection::vec(
        (
            0u64..25,
            0u8..4,
            0i64..6,
            1u8..4,
            0u64..3,
            prop_oneof![3 => Just(1isize), 1 => Just(-1)],
        ),
        0..50,
    )
    .prop_map(|raw| {
        let mut updates: Vec<Timed> = raw
            .into_iter()
            .map(|(sent, key, age, windows, later, diff)| {
                // Event times at or before the logical time, some older than a window.
                let event_time = (sent as i64 - 4 * age).max(0);
                (sent, ((key, (event_time, windows)), sent + later, diff))
            })
            .collect();
        updates.sort_by_key(|(sent, _)| *sent);
        updates
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// At every tick (ticked) or every time (exact), the rows are those of the counters the
    /// window definitions give, whatever the batching, workers, lateness and retractions.
    #[test]
    fn fold_passages_matches_the_window_definition(
        updates in timed_records(),
        workers in prop_oneof![Just(1usize), Just(3)],
        ticked in any::<bool>(),
    ) {
        let output = run_passages(workers, ticked, &updates);
        let step = if ticked { 3 } else { 1 };
        for as_of in (0..40).step_by(step) {
            let got: BTreeMap<(u8, Counters), isize> = accumulate_any(&output, as_of);
            prop_assert_eq!(got, passages_oracle(&updates, as_of), "as of {}", as_of);
        }
    }
}

fn accumulate_any<D: Ord + Clone>(output: &[(D, u64, isize)], as_of: u64) -> BTreeMap<D, isize> {
    let mut at: BTreeMap<D, isize> = BTreeMap::new();
    for (row, time, diff) in output {
        if *time <= as_of {
            *at.entry(row.clone()).or_insert(0) += diff;
        }
    }
    at.retain(|_, diff| *diff != 0);
    at
}
