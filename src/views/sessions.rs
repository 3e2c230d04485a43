//! Sessions: a user's events sorted by time; a gap longer than `gap` starts a new session.
//!
//! These functions work at any timestamp and share the arrangement of [`user_times`]; for `u64`
//! event-second time the runtime keeps the same rows with less work in
//! [`history_views`](super::history::history_views).

use super::{flatten, user_times, ArrangedBy, Diff, UserTimes};
use crate::event::{Event, Time, UserId};
use differential_dataflow::lattice::Lattice;
use differential_dataflow::trace::implementations::{ValBuilder, ValSpine};
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use timely::progress::Timestamp;

/// One session of a user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Session {
    /// Time of its first event.
    pub start: Time,
    /// Time of its last event.
    pub end: Time,
    /// Number of events in it.
    pub events: u64,
}

/// Splits sorted `(time, multiplicity)` pairs into sessions separated by gaps longer than `gap`.
///
/// ```
/// use behave::views::sessions::split_sessions;
/// let s = split_sessions([(0, 1), (60, 2), (4000, 1)], 1800);
/// assert_eq!(s.len(), 2);
/// assert_eq!((s[0].start, s[0].end, s[0].events), (0, 60, 3));
/// assert_eq!((s[1].start, s[1].end, s[1].events), (4000, 4000, 1));
/// ```
pub fn split_sessions(times: impl IntoIterator<Item = (Time, u64)>, gap: i64) -> Vec<Session> {
    let mut sessions: Vec<Session> = Vec::new();
    for (time, count) in times {
        match sessions.last_mut() {
            Some(current) if time - current.end <= gap => {
                current.end = time;
                current.events += count;
            }
            _ => sessions.push(Session {
                start: time,
                end: time,
                events: count,
            }),
        }
    }
    sessions
}

/// The sessions of every user, from the shared [`UserTimes`] index, as an arrangement.
pub fn sessions_arranged<'s, T>(
    times: UserTimes<'s, T>,
    gap: i64,
) -> ArrangedBy<'s, UserId, Session, T>
where
    T: Timestamp + Lattice,
{
    times.reduce_abelian::<_, ValBuilder<_, _, _, _>, ValSpine<UserId, Session, T, Diff>, _, _>(
        "Sessions",
        move |_user, input: &[(&Time, Diff)], output: &mut Vec<(Session, Diff)>| {
            let times = input
                .iter()
                .filter(|(_, count)| *count > 0)
                .map(|(time, count)| (**time, *count as u64));
            output.extend(split_sessions(times, gap).into_iter().map(|s| (s, 1)));
        },
        |buffer, user, updates| {
            buffer.clear();
            buffer.extend(updates.drain(..).map(|(v, t, r)| ((*user, v), t, r)));
        },
    )
}

/// The sessions of every user: `(user, session)` for each session.
///
/// ```
/// use behave::event::{Event, UserId};
/// use behave::views::sessions;
/// use differential_dataflow::input::Input;
///
/// timely::example(|scope| {
///     let events = scope
///         .new_collection_from(vec![
///             Event::new(UserId(1), 0, "view"),
///             Event::new(UserId(1), 600, "view"),
///             Event::new(UserId(1), 9_000, "view"),
///         ])
///         .1;
///     sessions(events, 1_800)
///         .map(|(user, s)| (user, s.start, s.end, s.events))
///         .assert_eq(
///             scope
///                 .new_collection_from(vec![(UserId(1), 0, 600, 2), (UserId(1), 9_000, 9_000, 1)])
///                 .1,
///         );
/// });
/// ```
pub fn sessions<'s, T>(
    events: VecCollection<'s, T, Event, Diff>,
    gap: i64,
) -> VecCollection<'s, T, (UserId, Session), Diff>
where
    T: Timestamp + Lattice,
{
    flatten(sessions_arranged(user_times(events), gap))
}
