//! The percentile operators (`views::percentile`) against a plain batch computation: random
//! per-user metrics that change, appear and disappear (retractions) over time, sent in small
//! batches, some ahead of their time, on 1 and 3 workers. At every time, the threshold must be the
//! nearest-rank percentile of the metrics present and the members the users at or above it.

mod common;

use behave::event::{Sym, UserId};
use behave::views::percentile::{at_or_above, percentile_thresholds};
use common::dataflow::feed;
use differential_dataflow::input::InputSession;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// `((metric, user), time, diff)`, and the input time it is sent at.
type Update = (u64, ((i64, UserId), u64, isize));

/// What the dataflow produced: members, and the thresholds seen by worker 0.
type Output = (Vec<((Sym, UserId), u64, isize)>, Vec<(i64, u64, isize)>);

fn run(workers: usize, percentile: u32, updates: &[Update]) -> Output {
    let updates = Arc::new(updates.to_vec());
    let members = Arc::new(Mutex::new(Vec::new()));
    let thresholds = Arc::new(Mutex::new(Vec::new()));
    let (members_sink, thresholds_sink) = (members.clone(), thresholds.clone());
    let key = Sym::of("top");
    timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let mut input: InputSession<u64, (i64, UserId), isize> = InputSession::new();
        let (members_sink, thresholds_sink) = (members_sink.clone(), thresholds_sink.clone());
        worker.dataflow::<u64, _, _>(|scope| {
            let metrics = input.to_collection(scope);
            let limits = percentile_thresholds(metrics.clone(), key, percentile);
            let (members, _state) = at_or_above(metrics, limits.clone(), key);
            members.inspect(move |u| members_sink.lock().unwrap().push(*u));
            limits.inspect(move |u| {
                if index == 0 {
                    thresholds_sink.lock().unwrap().push(*u);
                }
            });
        });
        // Each user's updates from one worker, as the metric folds send them.
        feed(worker, input, &updates, |_, (_, user)| {
            user.0 as usize % peers == index
        });
    })
    .expect("timely runs");
    let members = members.lock().unwrap().clone();
    let thresholds = thresholds.lock().unwrap().clone();
    (members, thresholds)
}

/// The accumulated collection at `time`.
fn at<D: Ord + Clone>(updates: &[(D, u64, isize)], time: u64) -> BTreeMap<D, isize> {
    let mut acc = BTreeMap::new();
    for (d, t, r) in updates {
        if *t <= time {
            *acc.entry(d.clone()).or_insert(0) += r;
        }
    }
    acc.retain(|_, r| *r != 0);
    acc
}

/// The nearest-rank threshold, literally: sort the metrics, take rank `ceil(P/100 · n)`.
fn oracle_threshold(metrics: &BTreeMap<UserId, i64>, percentile: u32) -> Option<i64> {
    let mut sorted: Vec<i64> = metrics.values().copied().collect();
    sorted.sort();
    let n = sorted.len() as u64;
    let rank = (u64::from(percentile.clamp(1, 100)) * n).div_ceil(100);
    (rank >= 1).then(|| sorted[rank as usize - 1])
}

/// Per time step, the users whose metric becomes `Some(m)` or who leave (`None`).
fn steps() -> impl Strategy<Value = Vec<Vec<(u8, Option<i64>)>>> {
    prop::collection::vec(
        prop::collection::vec((0u8..14, prop::option::weighted(0.8, -6i64..9)), 0..8),
        1..16,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn members_and_thresholds_match_a_batch_computation(
        steps in steps(),
        percentile in 0u32..=101,
        early in prop::collection::vec(0u64..3, 64),
        workers in prop_oneof![Just(1usize), Just(3)],
    ) {
        // The oracle state at each time, and the updates that lead there.
        let mut current: BTreeMap<UserId, i64> = BTreeMap::new();
        let mut states = Vec::new();
        let mut updates: Vec<Update> = Vec::new();
        for (step, changes) in steps.iter().enumerate() {
            let time = 1 + step as u64 * 10;
            for (i, (user, metric)) in changes.iter().enumerate() {
                let user = UserId(u64::from(*user));
                let sent = time.saturating_sub(10 * early[i % early.len()]);
                if let Some(old) = current.remove(&user) {
                    updates.push((sent, ((old, user), time, -1)));
                }
                if let Some(new) = metric {
                    current.insert(user, *new);
                    updates.push((sent, ((*new, user), time, 1)));
                }
            }
            states.push((time, current.clone()));
        }
        updates.sort_by_key(|(sent, _)| *sent);
        let (members, thresholds) = run(workers, percentile, &updates);
        for (time, metrics) in &states {
            let threshold = oracle_threshold(metrics, percentile);
            let expected: BTreeSet<UserId> = metrics
                .iter()
                .filter(|(_, m)| threshold.is_some_and(|t| **m >= t))
                .map(|(u, _)| *u)
                .collect();
            let got = at(&members, *time);
            prop_assert!(got.values().all(|r| *r == 1), "multiplicities at {}: {:?}", time, got);
            let got: BTreeSet<UserId> = got.keys().map(|(_, u)| *u).collect();
            prop_assert_eq!(&got, &expected, "members at {}", time);
            let limits: Vec<i64> = at(&thresholds, *time)
                .into_iter()
                .map(|(t, r)| {
                    assert_eq!(r, 1);
                    t
                })
                .collect();
            prop_assert_eq!(limits, threshold.into_iter().collect::<Vec<_>>(), "threshold at {}", time);
        }
    }
}

/// Every user tied with the threshold is a member, and a threshold that moves up and down again
/// moves the users between its positions out and back in.
#[test]
fn ties_and_a_moving_threshold() {
    let u = |i: u64| UserId(i);
    // Time 1: metrics 1, 2, 2, 2, 5; the 50th percentile (rank 3) is 2: four members.
    let mut updates: Vec<Update> = [(1, 1), (2, 2), (2, 3), (2, 4), (5, 5)]
        .into_iter()
        .map(|(m, user)| (1, ((m, u(user)), 1, 1)))
        .collect();
    // Time 2: two more users with metric 9: n = 7, rank 4 is still 2.
    updates.push((2, ((9, u(6)), 2, 1)));
    updates.push((2, ((9, u(7)), 2, 1)));
    // Time 3: three more at 9: n = 10, rank 5 is 5: users 5..=10.
    for user in 8..=10 {
        updates.push((3, ((9, u(user)), 3, 1)));
    }
    // Time 4: they leave again: back to rank 4, metric 2.
    for user in 8..=10 {
        updates.push((4, ((9, u(user)), 4, -1)));
    }
    for workers in [1, 2] {
        let (members, _) = run(workers, 50, &updates);
        let set = |time| -> Vec<u64> { at(&members, time).keys().map(|(_, u)| u.0).collect() };
        assert_eq!(set(1), vec![2, 3, 4, 5]);
        assert_eq!(set(2), vec![2, 3, 4, 5, 6, 7]);
        assert_eq!(set(3), vec![5, 6, 7, 8, 9, 10]);
        assert_eq!(set(4), vec![2, 3, 4, 5, 6, 7]);
    }
}
