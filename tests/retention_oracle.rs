//! The retention view agrees with a plain batch oracle (written from DESIGN "Views" with
//! chrono's calendar) at the final as-of time, on random streams spanning months with random
//! forgets, fixed UTC offsets including "+05:30" and "-08:00", all three periods, bounded and
//! unbounded, on 1 and 3 workers; plus calendar edge cases and forgetting a whole cohort.

mod common;

use behave::event::{Event, Sym, UserId};
use behave::time::parse_offset;
use behave::views::retention::{retention, retention_table, Period, RetentionRow, RetentionSpec};
use chrono::{DateTime, Datelike, NaiveDate};
use common::dataflow::{at, inserts, run_view, schedule, Update};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;
const START: i64 = 1_700_000_000; // 2023-11-14T22:13:20Z

// ---------------------------------------------------------------------------------------------
// Harness: feed updates through a dataflow on `workers` workers and capture its output.

/// Runs the retention view for each spec in one dataflow; returns each spec's table at `as_of`.
fn tables(
    workers: usize,
    updates: &[Update],
    specs: &[RetentionSpec],
    as_of: i64,
) -> Vec<Vec<RetentionRow>> {
    let dataflow_specs = specs.to_vec();
    let out = run_view(workers, updates, move |events| {
        let parts: Vec<_> = dataflow_specs
            .iter()
            .enumerate()
            .map(|(i, spec)| retention(events.clone(), spec).map(move |row| (i, row)))
            .collect();
        differential_dataflow::collection::concatenate(events.scope(), parts)
    });
    let accumulated = at(&out, as_of as u64);
    specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let counts: Vec<((i64, i64), u64)> = accumulated
                .iter()
                .filter(|((j, _), _)| *j == i)
                .map(|((_, row), mult)| {
                    assert_eq!(*mult, 1, "{row:?} has multiplicity {mult}");
                    *row
                })
                .collect();
            retention_table(counts, as_of, spec)
        })
        .collect()
}

/// The rows as `(cohort label, k, cohort size, retained)`, checking each rate on the way.
fn cells(rows: &[RetentionRow]) -> Vec<(String, i64, u64, u64)> {
    rows.iter()
        .map(|r| {
            assert_eq!(r.rate, r.retained as f64 / r.cohort_size as f64);
            (r.cohort_label.clone(), r.k, r.cohort_size, r.retained)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The oracle: chrono's calendar and the definitions, literally.

/// The first day of the period holding `t` in the local calendar of `offset`.
fn oracle_period_start(period: Period, t: i64, offset: i64) -> NaiveDate {
    let date = DateTime::from_timestamp(t + offset, 0)
        .unwrap()
        .date_naive();
    match period {
        Period::Day => date,
        Period::Week => {
            date - chrono::Duration::days(i64::from(date.weekday().num_days_from_monday()))
        }
        Period::Month => NaiveDate::from_ymd_opt(date.year(), date.month(), 1).unwrap(),
    }
}

/// How many periods `later` is after `earlier` (both period starts).
fn oracle_periods_between(period: Period, earlier: NaiveDate, later: NaiveDate) -> i64 {
    match period {
        Period::Day => (later - earlier).num_days(),
        Period::Week => (later - earlier).num_days() / 7,
        Period::Month => {
            i64::from(later.year() - earlier.year()) * 12 + i64::from(later.month())
                - i64::from(earlier.month())
        }
    }
}

fn oracle_retention(
    events: &[Event],
    spec: &RetentionSpec,
    as_of: i64,
) -> Vec<(String, i64, u64, u64)> {
    let start_of = |t: i64| oracle_period_start(spec.period, t, spec.utc_offset);
    let last = start_of(as_of);
    // Each user's cohort: the period of their first start event.
    let mut cohort_of: BTreeMap<UserId, NaiveDate> = BTreeMap::new();
    for e in events {
        if spec.start_event.is_none_or(|s| s == e.kind) {
            let first = cohort_of.entry(e.user).or_insert(start_of(e.time));
            *first = (*first).min(start_of(e.time));
        }
    }
    // Each user's return periods.
    let mut returns: BTreeMap<UserId, BTreeSet<NaiveDate>> = BTreeMap::new();
    for e in events {
        if spec.return_event.is_none_or(|r| r == e.kind) {
            returns.entry(e.user).or_default().insert(start_of(e.time));
        }
    }
    let cohorts: BTreeSet<NaiveDate> = cohort_of.values().copied().collect();
    let mut rows = Vec::new();
    for cohort in cohorts {
        let users: Vec<UserId> = cohort_of
            .iter()
            .filter(|(_, c)| **c == cohort)
            .map(|(u, _)| *u)
            .collect();
        let size = users.len() as u64;
        for k in 0..=oracle_periods_between(spec.period, cohort, last) {
            let retained = if k == 0 {
                size
            } else {
                users
                    .iter()
                    .filter(|u| {
                        returns.get(u).is_some_and(|periods| {
                            periods.iter().any(|p| {
                                let offset = oracle_periods_between(spec.period, cohort, *p);
                                if spec.unbounded {
                                    offset >= k
                                } else {
                                    offset == k
                                }
                            })
                        })
                    })
                    .count() as u64
            };
            rows.push((cohort.format("%Y-%m-%d").to_string(), k, size, retained));
        }
    }
    rows
}

// ---------------------------------------------------------------------------------------------
// Random streams.

fn arb_event() -> impl Strategy<Value = Event> {
    (0u64..9, 0i64..(100 * DAY), 0usize..3).prop_map(|(user, offset, kind)| {
        Event::new(
            UserId(user),
            START + offset - offset % 600,
            ["signup", "view", "buy"][kind],
        )
    })
}

fn arb_kind() -> impl Strategy<Value = Option<Sym>> {
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(Sym::of("signup"))),
        1 => Just(Some(Sym::of("buy"))),
    ]
}

fn spec(period: Period, offset: &str, unbounded: bool) -> RetentionSpec {
    RetentionSpec {
        period,
        utc_offset: parse_offset(offset).unwrap(),
        start_event: None,
        return_event: None,
        unbounded,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20, .. ProptestConfig::default() })]

    #[test]
    fn retention_matches_oracle_with_forgets(
        events in proptest::collection::vec(arb_event(), 0..50),
        forgets in proptest::collection::vec((0u64..11, 0i64..(110 * DAY)), 0..3),
        offset in prop_oneof![Just("Z"), Just("+05:30"), Just("-08:00"), Just("+13:45")],
        start_event in arb_kind(),
        return_event in arb_kind(),
        tick in prop_oneof![Just(1i64), Just(HOUR), Just(DAY)],
        workers in prop_oneof![Just(1usize), Just(3)],
    ) {
        let forgets: Vec<(u64, i64)> = forgets.into_iter().map(|(u, t)| (u, START + t)).collect();
        let (updates, as_of, survivors) = schedule(&events, &forgets, tick, START);
        let mut specs = Vec::new();
        for period in [Period::Day, Period::Week, Period::Month] {
            for unbounded in [false, true] {
                specs.push(RetentionSpec {
                    start_event,
                    return_event,
                    ..spec(period, offset, unbounded)
                });
            }
        }
        let got = tables(workers, &updates, &specs, as_of);
        for (spec, table) in specs.iter().zip(got) {
            prop_assert_eq!(cells(&table), oracle_retention(&survivors, spec, as_of), "{:?}", spec);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Edge cases.

/// Seconds since the epoch of a local date-time in `offset`, e.g. `t("2024-03-01T00:00:00+05:30")`.
fn t(text: &str) -> i64 {
    DateTime::parse_from_rfc3339(text).unwrap().timestamp()
}

fn row(label: &str, k: i64, size: u64, retained: u64) -> (String, i64, u64, u64) {
    (label.to_string(), k, size, retained)
}

#[test]
fn first_event_exactly_at_a_period_boundary_in_an_offset() {
    // Midnight of 2024-03-01 at +05:30 is 2024-02-29T18:30:00Z.
    let boundary = t("2024-03-01T00:00:00+05:30");
    assert_eq!(boundary, t("2024-02-29T18:30:00Z"));
    let events = vec![
        Event::new(UserId(1), boundary, "view"),
        Event::new(UserId(2), boundary - 1, "view"),
    ];
    let as_of = boundary + HOUR;
    let specs = [
        spec(Period::Day, "+05:30", false),
        spec(Period::Month, "+05:30", false),
        // In UTC both events are on 2024-02-29.
        spec(Period::Day, "Z", false),
    ];
    for workers in [1, 3] {
        let got = tables(workers, &inserts(&events), &specs, as_of);
        assert_eq!(
            cells(&got[0]),
            vec![
                row("2024-02-29", 0, 1, 1),
                row("2024-02-29", 1, 1, 0),
                row("2024-03-01", 0, 1, 1)
            ]
        );
        assert_eq!(
            cells(&got[1]),
            vec![
                row("2024-02-01", 0, 1, 1),
                row("2024-02-01", 1, 1, 0),
                row("2024-03-01", 0, 1, 1)
            ]
        );
        assert_eq!(cells(&got[2]), vec![row("2024-02-29", 0, 2, 2)]);
    }
}

#[test]
fn iso_weeks_across_a_year_end() {
    let events = vec![
        // Thursday 2020-12-31: week of Monday 2020-12-28.
        Event::new(UserId(1), t("2020-12-31T12:00:00Z"), "view"),
        // Sunday 2021-01-03: the same ISO week (2020-W53).
        Event::new(UserId(1), t("2021-01-03T23:59:59Z"), "view"),
        Event::new(UserId(2), t("2021-01-03T10:00:00Z"), "view"),
        // Monday 2021-01-04: the next week.
        Event::new(UserId(1), t("2021-01-04T00:00:00Z"), "view"),
    ];
    let as_of = t("2021-01-04T00:00:00Z");
    let specs = [
        spec(Period::Week, "Z", false),
        spec(Period::Week, "-08:00", false),
    ];
    for workers in [1, 3] {
        let got = tables(workers, &inserts(&events), &specs, as_of);
        assert_eq!(
            cells(&got[0]),
            vec![row("2020-12-28", 0, 2, 2), row("2020-12-28", 1, 2, 1)]
        );
        // At -08:00, Monday 00:00 UTC is still Sunday: everything is in one week.
        assert_eq!(cells(&got[1]), vec![row("2020-12-28", 0, 2, 2)]);
    }
}

#[test]
fn month_lengths_january_to_leap_february_to_march() {
    let events = vec![
        Event::new(UserId(1), t("2024-01-31T23:00:00Z"), "view"),
        Event::new(UserId(1), t("2024-02-29T23:59:59Z"), "view"),
        Event::new(UserId(1), t("2024-03-01T00:00:00Z"), "view"),
        Event::new(UserId(2), t("2024-02-29T00:00:00Z"), "view"),
        Event::new(UserId(2), t("2024-03-31T00:00:00Z"), "view"),
        Event::new(UserId(3), t("2024-02-01T00:00:00Z"), "view"),
    ];
    let as_of = t("2024-03-31T00:00:00Z");
    let specs = [
        spec(Period::Month, "Z", false),
        spec(Period::Month, "Z", true),
    ];
    for workers in [1, 3] {
        let got = tables(workers, &inserts(&events), &specs, as_of);
        let expected = vec![
            row("2024-01-01", 0, 1, 1),
            row("2024-01-01", 1, 1, 1),
            row("2024-01-01", 2, 1, 1),
            row("2024-02-01", 0, 2, 2),
            row("2024-02-01", 1, 2, 1),
        ];
        // User 1 is retained in both later months; February's cohort is users 2 and 3, and only
        // user 2 returns (on March 31).
        assert_eq!(cells(&got[0]), expected);
        assert_eq!(cells(&got[1]), expected);
    }
}

#[test]
fn unbounded_counts_returns_in_later_periods() {
    let day0 = t("2024-05-06T09:00:00Z");
    let events = vec![
        Event::new(UserId(1), day0, "signup"),
        Event::new(UserId(1), day0 + 3 * DAY, "buy"),
        Event::new(UserId(2), day0 + HOUR, "signup"),
        Event::new(UserId(2), day0 + DAY, "buy"),
        // A buy before signing up does not make a cohort, and returns before it do not count.
        Event::new(UserId(3), day0, "buy"),
        Event::new(UserId(3), day0 + 2 * DAY, "signup"),
    ];
    let mut bounded = spec(Period::Day, "Z", false);
    bounded.start_event = Some(Sym::of("signup"));
    bounded.return_event = Some(Sym::of("buy"));
    let unbounded = RetentionSpec {
        unbounded: true,
        ..bounded.clone()
    };
    let as_of = day0 + 3 * DAY;
    for workers in [1, 3] {
        let got = tables(
            workers,
            &inserts(&events),
            &[bounded.clone(), unbounded.clone()],
            as_of,
        );
        assert_eq!(
            cells(&got[0]),
            vec![
                row("2024-05-06", 0, 2, 2),
                row("2024-05-06", 1, 2, 1),
                row("2024-05-06", 2, 2, 0),
                row("2024-05-06", 3, 2, 1),
                row("2024-05-08", 0, 1, 1),
                row("2024-05-08", 1, 1, 0),
            ]
        );
        assert_eq!(
            cells(&got[1]),
            vec![
                row("2024-05-06", 0, 2, 2),
                row("2024-05-06", 1, 2, 2),
                row("2024-05-06", 2, 2, 1),
                row("2024-05-06", 3, 2, 1),
                row("2024-05-08", 0, 1, 1),
                row("2024-05-08", 1, 1, 0),
            ]
        );
    }
}

#[test]
fn forgetting_the_only_member_of_a_cohort_removes_the_cohort() {
    let events = vec![
        Event::new(UserId(1), t("2024-01-10T10:00:00Z"), "view"),
        Event::new(UserId(1), t("2024-02-10T10:00:00Z"), "view"),
        Event::new(UserId(2), t("2024-02-11T10:00:00Z"), "view"),
        Event::new(UserId(2), t("2024-03-02T10:00:00Z"), "view"),
    ];
    let forget_time = t("2024-03-05T00:00:00Z");
    let (updates, as_of, survivors) = schedule(&events, &[(1, forget_time)], HOUR, START);
    assert_eq!(survivors.len(), 2);
    let specs = [
        spec(Period::Month, "Z", false),
        spec(Period::Month, "Z", true),
    ];
    for workers in [1, 3] {
        let before = tables(workers, &updates, &specs, forget_time - 1);
        assert_eq!(cells(&before[0])[0], row("2024-01-01", 0, 1, 1));
        let after = tables(workers, &updates, &specs, as_of);
        let expected = vec![row("2024-02-01", 0, 1, 1), row("2024-02-01", 1, 1, 1)];
        assert_eq!(cells(&after[0]), expected);
        assert_eq!(cells(&after[1]), expected);
    }
}

#[test]
fn period_labels_and_indices() {
    for offset in ["Z", "+05:30", "-08:00"] {
        let o = parse_offset(offset).unwrap();
        for period in [Period::Day, Period::Week, Period::Month] {
            let mut time = t("2019-12-20T00:00:00Z");
            while time < t("2021-03-10T00:00:00Z") {
                let index = period.index(time, o);
                let start = oracle_period_start(period, time, o);
                assert_eq!(period.label(index), start.format("%Y-%m-%d").to_string());
                assert!(period.start(index, o) <= time && time < period.start(index + 1, o));
                time += 5 * HOUR + 17;
            }
        }
    }
}
