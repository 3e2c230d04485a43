//! Cohort retention (DESIGN "Views"): a user's cohort is the period (day, ISO week starting
//! Monday, or calendar month, in a fixed UTC offset) of their first start event. For cohort `c`
//! and offset `k >= 0`, *retained* counts the users of `c` with a return event in period `c+k`
//! (or, `unbounded`, in `c+k` or later); `k = 0` is the cohort size.
//!
//! The dataflow ([`retention`]) maintains one collection of `((cohort, k), retained)` counts in
//! which `k = 0` holds the cohort size and only non-zero counts are present. A snapshot turns it
//! into the reported table, zeros included, up to the as-of period, with [`retention_table`].

use super::fold::{fold_by_key_audited, FoldKeys};
use super::Diff;
use crate::event::{Event, Sym, Time, UserId};
use crate::time::DAY;
use chrono::{Datelike, NaiveDate};
use differential_dataflow::operators::CountTotal;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A period index (days, ISO weeks or months since the epoch; see [`Period::index`]).
pub type PeriodIndex = i64;

/// The calendar unit of cohorts and offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    /// Calendar days.
    Day,
    /// ISO weeks, Monday to Sunday.
    Week,
    /// Calendar months.
    Month,
}

/// Days from 0001-01-01 (day 1 in chrono's count) to 1970-01-01.
const EPOCH_DAYS_FROM_CE: i64 = 719_163;

/// The date of a day number (days since 1970-01-01), clamped to chrono's date range
/// (about ±262,000 years).
fn date_of_day(day: i64) -> NaiveDate {
    let from_ce = day.saturating_add(EPOCH_DAYS_FROM_CE);
    match i32::try_from(from_ce)
        .ok()
        .and_then(NaiveDate::from_num_days_from_ce_opt)
    {
        Some(date) => date,
        None if from_ce < 0 => NaiveDate::MIN,
        None => NaiveDate::MAX,
    }
}

impl Period {
    /// The index of the period holding time `t`, in the calendar of `utc_offset` (seconds east):
    /// - `Day`: days since 1970-01-01;
    /// - `Week`: ISO weeks (Monday first) since the week of 1970-01-01, a Thursday:
    ///   `(day + 3).div_euclid(7)`;
    /// - `Month`: `year * 12 + month0`.
    ///
    /// Consecutive periods have consecutive indices, so `k` is a difference of indices.
    ///
    /// ```
    /// use behave::views::retention::Period;
    /// let t = 1_704_067_200; // 2024-01-01T00:00:00Z, a Monday
    /// assert_eq!(Period::Day.index(t, 0), 19_723);
    /// assert_eq!(Period::Day.index(t - 1, 0), 19_722);
    /// // 00:00 UTC is still Sunday 2023-12-31 at -08:00.
    /// assert_eq!(Period::Day.index(t, -8 * 3_600), 19_722);
    /// assert_eq!(Period::Week.index(t, 0), Period::Week.index(t - 1, 0) + 1);
    /// assert_eq!(Period::Month.index(t, 0), 2024 * 12);
    /// assert_eq!(Period::Month.index(t - 1, 0), 2023 * 12 + 11);
    /// ```
    pub fn index(self, t: Time, utc_offset: i64) -> PeriodIndex {
        let day = t.saturating_add(utc_offset).div_euclid(DAY);
        match self {
            Period::Day => day,
            Period::Week => (day + 3).div_euclid(7),
            Period::Month => {
                let date = date_of_day(day);
                i64::from(date.year()) * 12 + i64::from(date.month0())
            }
        }
    }

    /// The first day (number of days since 1970-01-01) of period `index`.
    ///
    /// ```
    /// use behave::views::retention::Period;
    /// assert_eq!(Period::Week.first_day(0), -3); // Monday 1969-12-29
    /// assert_eq!(Period::Month.first_day(1970 * 12 + 1), 31); // 1970-02-01
    /// ```
    pub fn first_day(self, index: PeriodIndex) -> i64 {
        match self {
            Period::Day => index,
            Period::Week => index.saturating_mul(7).saturating_sub(3),
            Period::Month => {
                let year = i32::try_from(index.div_euclid(12)).ok();
                let month = index.rem_euclid(12) as u32 + 1;
                let date = match year.and_then(|y| NaiveDate::from_ymd_opt(y, month, 1)) {
                    Some(date) => date,
                    None if index < 0 => NaiveDate::MIN,
                    None => NaiveDate::MAX,
                };
                i64::from(date.num_days_from_ce()) - EPOCH_DAYS_FROM_CE
            }
        }
    }

    /// The start of period `index` as a time: midnight of its first day in `utc_offset`.
    ///
    /// ```
    /// use behave::views::retention::Period;
    /// let monday = Period::Week.index(1_704_067_200, 0);
    /// assert_eq!(Period::Week.start(monday, 0), 1_704_067_200);
    /// assert_eq!(Period::Day.start(0, 19_800), -19_800);
    /// ```
    pub fn start(self, index: PeriodIndex, utc_offset: i64) -> Time {
        self.first_day(index)
            .saturating_mul(DAY)
            .saturating_sub(utc_offset)
    }

    /// The cohort label of period `index`: its first day as `YYYY-MM-DD`.
    ///
    /// ```
    /// use behave::views::retention::Period;
    /// let t = 1_609_459_200; // Friday 2021-01-01T00:00:00Z
    /// assert_eq!(Period::Day.label(Period::Day.index(t, 0)), "2021-01-01");
    /// assert_eq!(Period::Week.label(Period::Week.index(t, 0)), "2020-12-28");
    /// assert_eq!(Period::Month.label(Period::Month.index(t - 1, 0)), "2020-12-01");
    /// ```
    pub fn label(self, index: PeriodIndex) -> String {
        date_of_day(self.first_day(index))
            .format("%Y-%m-%d")
            .to_string()
    }
}

/// What a retention matrix counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionSpec {
    /// Cohort and offset period.
    pub period: Period,
    /// The fixed UTC offset (seconds east) whose calendar defines periods.
    pub utc_offset: i64,
    /// The event whose first occurrence puts a user in a cohort; `None`: any event.
    pub start_event: Option<Sym>,
    /// The event that counts as a return; `None`: any event.
    pub return_event: Option<Sym>,
    /// Count users with a return in `c+k` or later, instead of exactly in `c+k`.
    pub unbounded: bool,
}

impl RetentionSpec {
    /// The period index of time `t` under this spec.
    pub fn index(&self, t: Time) -> PeriodIndex {
        self.period.index(t, self.utc_offset)
    }
}

/// A user's periods with events, ascending, each with its multiplicities of start events and of
/// return events (a period with neither is absent).
type Periods = Vec<(PeriodIndex, [Diff; 2])>;

/// Adds `starts` and `returns` to the multiplicities of period `p` in `periods`, dropping the
/// period when both are zero.
fn add_period(periods: &mut Periods, p: PeriodIndex, starts: Diff, returns: Diff) {
    match periods.binary_search_by(|(q, _)| q.cmp(&p)) {
        Ok(i) => {
            let counts = &mut periods[i].1;
            counts[0] += starts;
            counts[1] += returns;
            if *counts == [0, 0] {
                periods.remove(i);
            }
        }
        Err(i) => periods.insert(i, (p, [starts, returns])),
    }
}

/// Per user, from their [`Periods`]: the user's cohort `c` (their first period with a start
/// event) and the offsets `k` they count for, ascending. Bounded: `0` and every `p - c > 0`
/// with a return in `p`; unbounded: only the largest such offset (or `0`), expanded per cohort
/// later.
fn user_offsets(periods: &Periods, unbounded: bool, output: &mut Vec<(PeriodIndex, i64)>) {
    let Some(first) = periods.iter().position(|(_, [starts, _])| *starts > 0) else {
        return;
    };
    let c = periods[first].0;
    let mut returns = periods[first + 1..]
        .iter()
        .filter(|(_, [_, returns])| *returns > 0)
        .map(|(p, _)| p - c);
    if unbounded {
        output.push((c, returns.next_back().unwrap_or(0)));
    } else {
        output.push((c, 0));
        output.extend(returns.map(|k| (c, k)));
    }
}

/// Cohort retention counts: `((cohort, k), retained)` for every cohort period `cohort` and
/// offset `k >= 0` with `retained > 0`, where `k = 0` carries the cohort size.
///
/// Cohorts and periods are [`Period::index`] values (label them with [`Period::label`]). Absent
/// pairs are zero; [`retention_table`] fills them in at snapshot time. Periods come from event
/// times, not logical times; with event time as logical time (the `u64` seconds of behave
/// dataflows), no period after the as-of period ever appears.
///
/// Each user's periods are kept as a small summary
/// ([`fold_by_key`](super::fold::fold_by_key)), so a user's update costs work proportional to
/// the number of distinct periods they are active in; with `unbounded`, each change to a cohort
/// costs work proportional to its largest offset.
///
/// ```
/// use behave::event::{Event, UserId};
/// use behave::views::retention::{retention, Period, RetentionSpec};
/// use differential_dataflow::input::Input;
///
/// const DAY: i64 = 86_400;
/// let monday = 1_704_067_200; // 2024-01-01
/// let spec = RetentionSpec {
///     period: Period::Day,
///     utc_offset: 0,
///     start_event: None,
///     return_event: None,
///     unbounded: false,
/// };
/// let c = spec.index(monday);
/// timely::example(move |scope| {
///     let events = scope
///         .new_collection_from(vec![
///             Event::new(UserId(1), monday, "view"),
///             Event::new(UserId(1), monday + 2 * DAY, "view"),
///             Event::new(UserId(2), monday + 3_600, "view"),
///             Event::new(UserId(2), monday + DAY, "view"),
///             Event::new(UserId(2), monday + 2 * DAY, "view"),
///         ])
///         .1;
///     let expected = scope
///         .new_collection_from(vec![((c, 0), 2u64), ((c, 1), 1), ((c, 2), 2)])
///         .1;
///     retention(events, &spec).assert_eq(expected);
/// });
/// ```
pub fn retention<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    spec: &RetentionSpec,
) -> VecCollection<'s, u64, ((PeriodIndex, i64), u64), Diff> {
    retention_with_state(events, spec).0
}

/// Retention counts `((cohort, k), retained)`, as [`retention`] gives them.
pub type RetentionCounts<'s> = VecCollection<'s, u64, ((PeriodIndex, i64), u64), Diff>;

/// [`retention`], with the users its per-user fold holds on this worker (for the forget audit).
pub fn retention_with_state<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    spec: &RetentionSpec,
) -> (RetentionCounts<'s>, FoldKeys<UserId>) {
    let RetentionSpec {
        period,
        utc_offset,
        start_event,
        return_event,
        unbounded,
    } = spec.clone();
    // One update per event: its period, and whether it starts a cohort and counts as a return.
    let per_user = events.flat_map(move |event: Event| {
        let starts = start_event.is_none_or(|kind| kind == event.kind);
        let returns = return_event.is_none_or(|kind| kind == event.kind);
        (starts || returns).then(|| {
            let p = period.index(event.time, utc_offset);
            (event.user, (p, starts, returns))
        })
    });
    // Each user's multiplicities of starts and returns per period; the user's cohort and
    // offsets follow from them.
    let (per_user, held) = fold_by_key_audited(
        per_user,
        "RetentionUser",
        |periods: &mut Periods, &(p, starts, returns), diff| {
            add_period(
                periods,
                p,
                diff * Diff::from(starts),
                diff * Diff::from(returns),
            );
        },
        move |_user, periods: &Periods, rows: &mut Vec<(PeriodIndex, i64)>| {
            user_offsets(periods, unbounded, rows);
        },
    );
    if !unbounded {
        let counts = per_user
            .count_total()
            .map(|(cohort_offset, n)| (cohort_offset, n as u64));
        return (counts, held);
    }
    // Unbounded: each user counts for every k up to their largest offset; per cohort, the
    // number of users with largest offset >= k (a suffix sum over the offset histogram).
    let counts = per_user
        .reduce_named(
            "RetentionUnbounded",
            |_cohort: &PeriodIndex,
             input: &[(&i64, Diff)],
             output: &mut Vec<((i64, u64), Diff)>| {
                let Some(&(max, _)) = input.last() else {
                    return;
                };
                // Walk k downwards, adding the users whose largest offset is k.
                let mut users = 0u64;
                let mut offsets = input.iter().rev().peekable();
                for k in (0..=*max).rev() {
                    while let Some((_, n)) = offsets.next_if(|(offset, _)| **offset >= k) {
                        users += (*n).max(0) as u64;
                    }
                    if users > 0 {
                        output.push(((k, users), 1));
                    }
                }
            },
        )
        .map(|(cohort, (k, n))| ((cohort, k), n));
    (counts, held)
}

/// One row of a retention table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetentionRow {
    /// The cohort's period index.
    pub cohort: PeriodIndex,
    /// The cohort's first day, `YYYY-MM-DD`.
    pub cohort_label: String,
    /// Offset in periods from the cohort.
    pub k: i64,
    /// Users in the cohort.
    pub cohort_size: u64,
    /// Users of the cohort retained at offset `k` (the cohort size at `k = 0`).
    pub retained: u64,
    /// `retained / cohort_size`.
    pub rate: f64,
}

/// The reported retention table at time `as_of`, from the accumulated contents of the
/// [`retention`] collection (`((cohort, k), retained)`, `k = 0` being the cohort size): for every
/// cohort with at least one user and every `k` from `0` up to the as-of period, one row, with
/// `retained = 0` where the collection has no entry. Rows are sorted by cohort, then `k`.
/// Cohorts after the as-of period are left out.
///
/// ```
/// use behave::views::retention::{retention_table, Period, RetentionSpec};
/// let spec = RetentionSpec {
///     period: Period::Day,
///     utc_offset: 0,
///     start_event: None,
///     return_event: None,
///     unbounded: false,
/// };
/// let rows = retention_table([((0, 0), 4), ((0, 2), 1)], 2 * 86_400 + 5, &spec);
/// let cells: Vec<_> = rows.iter().map(|r| (r.k, r.retained, r.rate)).collect();
/// assert_eq!(cells, vec![(0, 4, 1.0), (1, 0, 0.0), (2, 1, 0.25)]);
/// assert_eq!(rows[0].cohort_label, "1970-01-01");
/// ```
pub fn retention_table(
    counts: impl IntoIterator<Item = ((PeriodIndex, i64), u64)>,
    as_of: Time,
    spec: &RetentionSpec,
) -> Vec<RetentionRow> {
    let last = spec.index(as_of);
    let counts: BTreeMap<(PeriodIndex, i64), u64> = counts
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .fold(BTreeMap::new(), |mut map, (key, n)| {
            *map.entry(key).or_insert(0) += n;
            map
        });
    let mut rows = Vec::new();
    for (&(cohort, k), &size) in counts.range(..) {
        if k != 0 || cohort > last {
            continue;
        }
        let label = spec.period.label(cohort);
        for k in 0..=(last - cohort) {
            let retained = counts.get(&(cohort, k)).copied().unwrap_or(0);
            rows.push(RetentionRow {
                cohort,
                cohort_label: label.clone(),
                k,
                cohort_size: size,
                retained,
                rate: retained as f64 / size as f64,
            });
        }
    }
    rows
}
