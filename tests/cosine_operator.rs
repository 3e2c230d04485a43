//! The in-place top-k cosine operators (`behave::views::cosine`) against a batch top-k at every
//! logical time: random sequences of membership insertions and retractions (down to nothing),
//! small id spaces so that cosines tie often, caps that groups cross both ways, on 1 and 3
//! workers. The output at each time must be exactly the change of the batch top-k at that time
//! (consolidated), and once every membership is retracted the operators' state must be empty.

use behave::views::cosine::top_k_cosine_with_state;
use behave::views::similarity::{closer, Similar};
use differential_dataflow::input::InputSession;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

type Membership = (u64, u64);

/// Output updates of the operators.
type Out = Vec<((u64, Similar<u64>), u64, isize)>;

/// The batch top-k of every member, from the definition: overlaps through groups of at most
/// `cap` members, set sizes over all groups, ranked by exact cosine, ties by smaller id.
fn batch(memberships: &BTreeSet<Membership>, k: usize, cap: u64) -> BTreeSet<(u64, Similar<u64>)> {
    let mut groups: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut sizes: BTreeMap<u64, u64> = BTreeMap::new();
    for &(g, m) in memberships {
        groups.entry(g).or_default().push(m);
        *sizes.entry(m).or_default() += 1;
    }
    let mut overlaps: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for members in groups.values() {
        if members.len() as u64 > cap {
            continue;
        }
        for &a in members {
            for &b in members {
                if a != b {
                    *overlaps.entry((a, b)).or_default() += 1;
                }
            }
        }
    }
    let mut candidates: BTreeMap<u64, Vec<Similar<u64>>> = BTreeMap::new();
    for (&(a, b), &overlap) in &overlaps {
        candidates.entry(a).or_default().push(Similar {
            neighbour: b,
            overlap,
            size: sizes[&a],
            neighbour_size: sizes[&b],
        });
    }
    let mut top = BTreeSet::new();
    for (a, mut list) in candidates {
        list.sort_by(closer);
        top.extend(list.into_iter().take(k).map(|s| (a, s)));
    }
    top
}

/// Runs the operators over `steps` (membership toggles per logical time, then a final time
/// retracting everything) and returns the output updates and whether every worker's state
/// was empty at the end.
fn run(workers: usize, steps: &[Vec<Membership>], k: usize, cap: u64) -> (Out, bool) {
    // The input updates per time: toggles against the current set; the last time empties it.
    let mut current: BTreeSet<Membership> = BTreeSet::new();
    let mut timed: Vec<(u64, Membership, isize)> = Vec::new();
    for (t, toggles) in steps.iter().enumerate() {
        for &m in toggles.iter().collect::<BTreeSet<_>>() {
            let diff = if current.remove(&m) {
                -1
            } else {
                current.insert(m);
                1
            };
            timed.push((t as u64, m, diff));
        }
    }
    let end = steps.len() as u64;
    for &m in &current {
        timed.push((end, m, -1));
    }
    let timed = Arc::new(timed);
    let captured = Arc::new(Mutex::new(Vec::new()));
    let emptied = Arc::new(Mutex::new(true));
    let (sink, empty) = (captured.clone(), emptied.clone());
    timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index(), worker.peers());
        let mut input: InputSession<u64, Membership, isize> = InputSession::new();
        let sink = sink.clone();
        let state = worker.dataflow::<u64, _, _>(|scope| {
            let (top, state) = top_k_cosine_with_state(input.to_collection(scope), k, cap);
            top.inspect(move |u| sink.lock().unwrap().push(*u));
            state
        });
        for &(time, membership, diff) in timed.iter() {
            if time > *input.time() {
                input.advance_to(time);
                input.flush();
                worker.step();
            }
            // Each worker feeds a share, so updates cross workers both ways.
            if (membership.0 + membership.1) as usize % peers == index {
                input.update(membership, diff);
            }
        }
        input.close();
        while worker.step() {}
        if !state.is_empty() {
            *empty.lock().unwrap() = false;
        }
    })
    .expect("timely runs");
    let out = captured.lock().unwrap().clone();
    let emptied = *emptied.lock().unwrap();
    (out, emptied)
}

fn check(steps: &[Vec<Membership>], k: usize, cap: u64) {
    // The batch top-k after each time, the last one empty.
    let mut current: BTreeSet<Membership> = BTreeSet::new();
    let mut expected = Vec::new();
    for toggles in steps {
        for &m in toggles.iter().collect::<BTreeSet<_>>() {
            if !current.remove(&m) {
                current.insert(m);
            }
        }
        expected.push(batch(&current, k, cap));
    }
    expected.push(BTreeSet::new());
    for workers in [1, 3] {
        let (out, emptied) = run(workers, steps, k, cap);
        // Every output update is the change at its time: consolidated, never zero.
        let mut by_time: BTreeMap<(u64, (u64, Similar<u64>)), isize> = BTreeMap::new();
        for (datum, time, diff) in &out {
            *by_time.entry((*time, *datum)).or_default() += diff;
        }
        assert_eq!(by_time.len(), out.len(), "unconsolidated output: {out:?}");
        let mut previous = BTreeSet::new();
        for (time, now) in expected.iter().enumerate() {
            let mut change: BTreeMap<(u64, Similar<u64>), isize> = BTreeMap::new();
            for d in now.difference(&previous) {
                change.insert(*d, 1);
            }
            for d in previous.difference(now) {
                change.insert(*d, -1);
            }
            let seen: BTreeMap<(u64, Similar<u64>), isize> = by_time
                .iter()
                .filter(|((t, _), _)| *t == time as u64)
                .map(|((_, d), r)| (*d, *r))
                .collect();
            assert_eq!(seen, change, "time {time}, {workers} workers");
            previous = now.clone();
        }
        assert!(emptied, "state left after retracting everything");
    }
}

fn arb_steps() -> impl Strategy<Value = Vec<Vec<Membership>>> {
    prop::collection::vec(prop::collection::vec((0u64..5, 0u64..7), 0..14), 1..7)
}

/// Longer runs over more members, a few toggles at a time, with small `k`: members hold more
/// candidates than they rank, so most size changes reach members whose best they cannot enter
/// (the operator does not re-rank those), and some later can.
fn arb_size_changes() -> impl Strategy<Value = Vec<Vec<Membership>>> {
    let start = prop::collection::vec((0u64..8, 0u64..14), 20..50);
    let later = prop::collection::vec(prop::collection::vec((0u64..8, 0u64..14), 1..4), 4..16);
    (start, later).prop_map(|(start, mut later)| {
        later.insert(0, start);
        later
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn size_changes_outside_the_best_are_skipped_exactly(
        steps in arb_size_changes(),
        k in 1usize..3,
    ) {
        check(&steps, k, 14);
    }

    #[test]
    fn operators_equal_batch_top_k_at_every_time(
        steps in arb_steps(),
        k in 0usize..4,
        cap in 1u64..6,
    ) {
        check(&steps, k, cap);
    }
}

#[test]
fn ties_and_a_group_crossing_the_cap() {
    // Members 1..=4 in group 0 (cap 3: over it, no pairs), then one leaves, then it is back.
    let all = vec![
        (0, 1),
        (0, 2),
        (0, 3),
        (0, 4),
        (1, 1),
        (1, 2),
        (2, 3),
        (2, 4),
    ];
    check(&[all, vec![(0, 4)], vec![(0, 4)], vec![(1, 2)]], 2, 3);
}
