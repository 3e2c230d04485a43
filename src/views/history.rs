//! Sessions and engagement from each user's event history kept in place: the form of the
//! [`sessions`](super::sessions()) and [`engagement`](super::engagement()) views that the
//! behave runtime maintains, for dataflows whose logical time is `u64` event seconds.
//!
//! The plain views are `reduce`s over an arrangement of each user's event times, so they
//! compose with any timestamp and share that arrangement; but a `reduce` replays a changed
//! user's whole input history from the arrangement's batches at every time the user changes,
//! and arranges its output once more. Here one per-user fold ([`fold_by_key_audited`]) keeps
//! each user's distinct event times with their multiplicities in a sorted vector, applies each
//! event once, and derives both views' rows from it only for the users a time changed: the
//! same rows at the same times, at a fraction of the work (BENCHMARKS.md, "History fold").

use super::fold::{fold_by_key_audited, FoldKeys};
use super::sessions::split_sessions;
use super::{Diff, Engagement, Session};
use crate::event::{Event, Time, UserId};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

/// Which of the two views to derive from the histories, with their parameters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistoryViews {
    /// The session gap in seconds, when sessions are wanted.
    pub sessions: Option<i64>,
    /// `(session gap, UTC offset)` in seconds, when engagement is wanted.
    pub engagement: Option<(i64, i64)>,
}

/// A row of either view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum HistoryRow {
    /// A row of [`sessions`](super::sessions()).
    Session(Session),
    /// The row of [`engagement`](super::engagement()).
    Engagement(Engagement),
}

/// A user's distinct event times, ascending, with their multiplicities. A time whose
/// multiplicity drops to zero stays as a zero entry until zeros are half the entries, so that
/// retracting a long history (a forget) costs linear time, not a shift per retraction; a
/// history with nothing left is empty (the default), and leaves the fold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Times {
    times: Vec<(Time, Diff)>,
    zeros: usize,
}

impl Times {
    /// Adds `diff` to the multiplicity of `time`.
    fn add(&mut self, time: Time, diff: Diff) {
        match self.times.binary_search_by(|(t, _)| t.cmp(&time)) {
            Ok(i) => {
                let count = &mut self.times[i].1;
                let was_zero = *count == 0;
                *count += diff;
                match (was_zero, *count == 0) {
                    (false, true) => self.zeros += 1,
                    (true, false) => self.zeros -= 1,
                    _ => {}
                }
                if 2 * self.zeros >= self.times.len() {
                    self.times.retain(|(_, count)| *count != 0);
                    self.zeros = 0;
                }
            }
            Err(i) => self.times.insert(i, (time, diff)),
        }
    }

    /// The times present (a positive multiplicity; in the states between a retraction and
    /// its insertion one can be negative), with their multiplicities, ascending.
    fn present(&self) -> impl Iterator<Item = (Time, u64)> + Clone + '_ {
        self.times
            .iter()
            .filter(|(_, count)| *count > 0)
            .map(|(time, count)| (*time, *count as u64))
    }
}

/// The sessions and engagement rows of `views` over `events`: `(user, row)` exactly as
/// [`sessions`](super::sessions()) and [`engagement`](super::engagement()) give them, at the
/// same times; with the keys (users) the fold holds on this worker, for the forget audit.
///
/// ```
/// use behave::event::{Event, UserId};
/// use behave::views::history::{history_views, HistoryRow, HistoryViews};
/// use behave::views::Session;
/// use differential_dataflow::input::Input;
///
/// let views = HistoryViews { sessions: Some(1_800), engagement: None };
/// timely::example(move |scope| {
///     let events = scope
///         .new_collection_from(vec![
///             Event::new(UserId(1), 0, "view"),
///             Event::new(UserId(1), 600, "view"),
///             Event::new(UserId(1), 9_000, "view"),
///         ])
///         .1;
///     let expected = scope
///         .new_collection_from(vec![
///             (UserId(1), HistoryRow::Session(Session { start: 0, end: 600, events: 2 })),
///             (UserId(1), HistoryRow::Session(Session { start: 9_000, end: 9_000, events: 1 })),
///         ])
///         .1;
///     history_views(events, views).0.assert_eq(expected);
/// });
/// ```
pub fn history_views<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    views: HistoryViews,
) -> (
    VecCollection<'s, u64, (UserId, HistoryRow), Diff>,
    FoldKeys<UserId>,
) {
    fold_by_key_audited(
        events.map(|event| (event.user, event.time)),
        "UserHistory",
        |times: &mut Times, &time: &Time, diff| times.add(time, diff),
        move |user: &UserId, times: &Times, rows: &mut Vec<(UserId, HistoryRow)>| {
            let present = times.present();
            let mut sessions = None;
            if let Some(gap) = views.sessions {
                let split = split_sessions(present.clone(), gap);
                sessions = Some((gap, split.len() as u64));
                rows.extend(split.into_iter().map(|s| (*user, HistoryRow::Session(s))));
            }
            if let Some((gap, utc_offset)) = views.engagement {
                // With the same gap, the sessions just split are the ones engagement counts.
                let engagement = match sessions {
                    Some((split_gap, count)) if split_gap == gap => {
                        Engagement::with_sessions(present, count, utc_offset)
                    }
                    _ => Engagement::from_times(present, gap, utc_offset),
                };
                if let Some(e) = engagement {
                    rows.push((*user, HistoryRow::Engagement(e)));
                }
            }
        },
    )
}
