//! The dataflow agrees with the plain batch oracles of sessions and engagement on random
//! streams with random forget requests, on 1 and several workers, and forgetting is
//! erasure-equivalent: the result is as if the forgotten users never existed.

mod common;

use common::*;
use proptest::prelude::*;

const DAY: i64 = 86_400;
const START: i64 = 1_704_067_200; // 2024-01-01T00:00:00Z

fn arb_stream() -> impl Strategy<Value = (Vec<RawEvent>, Vec<(String, i64)>)> {
    let event = (0u8..6, 0i64..(10 * DAY), 0u8..3).prop_map(|(user, offset, kind)| RawEvent {
        user: format!("u{user}"),
        // Cluster times so sessions of several events and gaps both occur.
        time: START + offset - offset % 600,
        kind: ["view", "click", "buy"][kind as usize].to_string(),
    });
    let forget =
        (0u8..8, 0i64..(12 * DAY)).prop_map(|(user, offset)| (format!("u{user}"), START + offset));
    (
        proptest::collection::vec(event, 0..60),
        proptest::collection::vec(forget, 0..3),
    )
}

/// Events that survive: those of users never forgotten.
fn survivors(events: &[RawEvent], forgets: &[(String, i64)]) -> Vec<RawEvent> {
    events
        .iter()
        .filter(|e| forgets.iter().all(|(u, _)| *u != e.user))
        .cloned()
        .collect()
}

fn as_of(events: &[RawEvent], forgets: &[(String, i64)]) -> Option<i64> {
    events
        .iter()
        .map(|e| e.time)
        .chain(forgets.iter().map(|f| f.1))
        .max()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    #[test]
    fn dataflow_matches_oracle_with_forgets(
        (events, forgets) in arb_stream(),
        gap_minutes in prop_oneof![Just(10i64), Just(30), Just(120)],
        workers in prop_oneof![Just(1usize), Just(3)],
        tick in prop_oneof![Just("1s"), Just("1h"), Just("1d")],
    ) {
        let dir = temp_dir();
        let events_path = dir.path().join("events.csv");
        let forget_path = dir.path().join("forget.csv");
        write_events(&events_path, &events);
        write_forgets(&forget_path, &forgets);
        let spec = spec_for(&events_path, Some(&forget_path), &format!("{gap_minutes}m"), tick, "10000d");
        let outcome = run(spec, workers, None);
        let kept = survivors(&events, &forgets);
        let gap = gap_minutes * 60;
        prop_assert_eq!(table(&outcome, "sessions"), oracle_sessions(&kept, gap));
        let as_of = as_of(&events, &forgets).unwrap_or(0);
        prop_assert_eq!(table(&outcome, "engagement"), oracle_engagement(&kept, gap, 0, as_of));
        let s = &outcome.summary;
        prop_assert_eq!(s.read, s.accepted + s.duplicates + s.rejected);
        // No forgotten user is a member of any segment.
        for row in table(&outcome, "segments") {
            prop_assert!(forgets.iter().all(|(u, _)| *u != row[1]), "{:?} is forgotten", row);
        }
        prop_assert_eq!(s.forget_audit.residual_records, 0);
        // Not even cancelled updates: the purge pulse forces a merge under the frontier.
        prop_assert_eq!(s.forget_audit.physical_records, 0);
    }

    #[test]
    fn forgetting_is_erasure_equivalent(
        (events, forgets) in arb_stream(),
        workers in prop_oneof![Just(1usize), Just(2)],
    ) {
        let dir = temp_dir();
        let all = dir.path().join("all.csv");
        let forget_path = dir.path().join("forget.csv");
        let erased = dir.path().join("erased.csv");
        write_events(&all, &events);
        write_forgets(&forget_path, &forgets);
        write_events(&erased, &survivors(&events, &forgets));
        let with_forget = run(spec_for(&all, Some(&forget_path), "30m", "1h", "10000d"), workers, None);
        // Same clock: the run that never saw the users takes its snapshot at the same as-of time.
        let clock = as_of(&events, &forgets);
        let never_existed = run(spec_for(&erased, None, "30m", "1h", "10000d"), 1, clock);
        prop_assert_eq!(&with_forget.tables, &never_existed.tables);
    }
}

#[test]
fn worker_count_does_not_change_output() {
    let mut events = Vec::new();
    for i in 0..400i64 {
        events.push(RawEvent {
            user: format!("user{}", i % 37),
            time: START + (i * 7_919) % (20 * DAY),
            kind: "view".into(),
        });
    }
    let dir = temp_dir();
    let path = dir.path().join("events.csv");
    let forget = dir.path().join("forget.csv");
    write_events(&path, &events);
    write_forgets(
        &forget,
        &[
            ("user3".into(), START + 5 * DAY),
            ("user30".into(), START + 15 * DAY),
        ],
    );
    let one = run(
        spec_for(&path, Some(&forget), "30m", "1h", "10000d"),
        1,
        None,
    );
    let four = run(
        spec_for(&path, Some(&forget), "30m", "1h", "10000d"),
        4,
        None,
    );
    assert!(!table(&one, "sessions").is_empty());
    assert_eq!(one.tables, four.tables);
    assert_eq!(one.summary.retracted_events, four.summary.retracted_events);
    assert_eq!(one.summary.forgotten_users, 2);
}
