//! Engagement: per-user churn-model features.
//!
//! These functions work at any timestamp and share the arrangement of
//! [`user_times`]; for `u64` event-second time the runtime keeps the same
//! rows with less work in [`history_views`](super::history::history_views).

use super::sessions::split_sessions;
use super::{flatten, user_times, ArrangedBy, Diff, UserTimes};
use crate::event::{Event, Time, UserId};
use crate::time::{day_of, DAY};
use differential_dataflow::lattice::Lattice;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use timely::progress::Timestamp;

/// A user's engagement features. "Days since last seen" depends on the snapshot's as-of time,
/// not on the data, so it is computed when a snapshot is taken: [`Engagement::days_since_last_seen`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Engagement {
    /// Number of events.
    pub events: u64,
    /// Number of distinct calendar days with an event (in the configured UTC offset).
    pub active_days: u64,
    /// Number of sessions (same gap as the sessions view).
    pub sessions: u64,
    /// Time of the first event.
    pub first_seen: Time,
    /// Time of the last event.
    pub last_seen: Time,
}

impl Engagement {
    /// Features of one user from their sorted `(time, multiplicity)` pairs; `None` if empty.
    ///
    /// ```
    /// use behave::views::Engagement;
    /// let e = Engagement::from_times([(0, 1), (600, 1), (90_000, 1)], 1_800, 0).unwrap();
    /// assert_eq!((e.events, e.active_days, e.sessions), (3, 2, 2));
    /// assert_eq!((e.first_seen, e.last_seen), (0, 90_000));
    /// ```
    pub fn from_times(
        times: impl IntoIterator<Item = (Time, u64)> + Clone,
        gap: i64,
        utc_offset: i64,
    ) -> Option<Engagement> {
        let sessions = split_sessions(times.clone(), gap).len() as u64;
        Engagement::with_sessions(times, sessions, utc_offset)
    }

    /// [`Engagement::from_times`] for a user whose number of sessions is already known.
    pub(crate) fn with_sessions(
        times: impl IntoIterator<Item = (Time, u64)>,
        sessions: u64,
        utc_offset: i64,
    ) -> Option<Engagement> {
        let mut events = 0u64;
        let mut active_days = 0u64;
        let mut last_day = None;
        let mut first_seen = None;
        let mut last_seen = 0;
        for (time, count) in times {
            events += count;
            first_seen.get_or_insert(time);
            last_seen = time;
            let day = day_of(time, utc_offset);
            if last_day != Some(day) {
                active_days += 1;
                last_day = Some(day);
            }
        }
        Some(Engagement {
            events,
            active_days,
            sessions,
            first_seen: first_seen?,
            last_seen,
        })
    }

    /// Whole days between the last event and `as_of` (0 if seen within the last 24 hours).
    ///
    /// ```
    /// use behave::views::Engagement;
    /// let e = Engagement::from_times([(0, 1)], 1_800, 0).unwrap();
    /// assert_eq!(e.days_since_last_seen(3 * 86_400 - 1), 2);
    /// ```
    pub fn days_since_last_seen(&self, as_of: Time) -> i64 {
        (as_of - self.last_seen).max(0) / DAY
    }
}

/// Every user's engagement features, from the shared [`UserTimes`] index, as an arrangement.
pub fn engagement_arranged<'s, T>(
    times: UserTimes<'s, T>,
    gap: i64,
    utc_offset: i64,
) -> ArrangedBy<'s, UserId, Engagement, T>
where
    T: Timestamp + Lattice,
{
    times.reduce_abelian::<_, ValBuilder<_, _, _, _>, ValSpine<UserId, Engagement, T, Diff>, _, _>(
        "Engagement",
        move |_user, input: &[(&Time, Diff)], output: &mut Vec<(Engagement, Diff)>| {
            let times = input
                .iter()
                .filter(|(_, count)| *count > 0)
                .map(|(time, count)| (**time, *count as u64));
            if let Some(features) = Engagement::from_times(times, gap, utc_offset) {
                output.push((features, 1));
            }
        },
        |buffer, user, updates| {
            buffer.clear();
            buffer.extend(updates.drain(..).map(|(v, t, r)| ((*user, v), t, r)));
        },
    )
}

/// Every user's engagement features: `(user, features)`.
pub fn engagement<'s, T>(
    events: VecCollection<'s, T, Event, Diff>,
    gap: i64,
    utc_offset: i64,
) -> VecCollection<'s, T, (UserId, Engagement), Diff>
where
    T: Timestamp + Lattice,
{
    flatten(engagement_arranged(user_times(events), gap, utc_offset))
}
