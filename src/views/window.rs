//! Sliding windows over event time, done the differential way: a record enters when it arrives
//! and is retracted `d` seconds of event time after its own time.
//!
//! The logical time of a behave dataflow is event time in seconds (`u64`, see DESIGN "Time"), and
//! an event enters its collection at a logical time at or after its event time. The window
//! operators here rely on that: they are defined for `u64` logical times only.

use super::Diff;
use crate::event::{Event, Time};
use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::operators::vec::Map;

/// The logical time at which a record with event time `time`, arriving at logical time `arrived`,
/// leaves a window of `d` seconds: `max(arrived, time + d)`, clamped to the `u64` range.
///
/// ```
/// use behave::views::window::expiry;
/// assert_eq!(expiry(100, 100, 60), 160);
/// // A record arriving after its window has passed leaves as soon as it arrives.
/// assert_eq!(expiry(500, 100, 60), 500);
/// assert_eq!(expiry(0, -100, 60), 0);
/// ```
pub fn expiry(arrived: u64, time: Time, d: i64) -> u64 {
    let end = time.saturating_add(d).max(0) as u64;
    end.max(arrived)
}

/// Every record of `collection` counted only while it is recent: a record with event time
/// `time_of(x)` is present at logical time `L` exactly when `time_of(x) <= L < time_of(x) + d`
/// (and it has arrived by `L`). Each update `(x, t, r)` is passed on together with
/// `(x, max(t, time_of(x) + d), -r)`.
///
/// A window of `d <= 0` is always empty. Retractions (e.g. a forgotten user's events) retract
/// their window copy too, whether the window has passed or not.
///
/// ```
/// use behave::views::window::sliding_by;
/// use differential_dataflow::input::InputSession;
/// use std::sync::{Arc, Mutex};
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let out = seen.clone();
/// timely::execute_directly(move |worker| {
///     let mut input: InputSession<u64, (&'static str, i64), isize> = InputSession::new();
///     worker.dataflow::<u64, _, _>(|scope| {
///         let out = out.clone();
///         sliding_by(input.to_collection(scope), 10, |x: &(&str, i64)| x.1)
///             .inspect(move |u| out.lock().unwrap().push(u.clone()));
///     });
///     input.advance_to(5);
///     input.insert(("a", 5));
///     input.close();
/// });
/// let mut seen = seen.lock().unwrap().clone();
/// seen.sort();
/// assert_eq!(seen, vec![(("a", 5), 5, 1), (("a", 5), 15, -1)]);
/// ```
pub fn sliding_by<'s, D, F>(
    collection: VecCollection<'s, u64, D, Diff>,
    d: i64,
    time_of: F,
) -> VecCollection<'s, u64, D, Diff>
where
    D: Clone + 'static,
    F: Fn(&D) -> Time + 'static,
{
    // Every emitted time is at least the update's own time, which is at least the time of the
    // capability it travels under, so the collection's timestamp invariant holds.
    collection
        .inner
        .flat_map(move |(data, time, diff)| {
            let leaves = expiry(time, time_of(&data), d);
            let copy = data.clone();
            [(data, time, diff), (copy, leaves, -diff)]
        })
        .as_collection()
}

/// The events of the last `d` seconds: at logical time (as-of) `L` the result holds exactly the
/// events with `L - d < time <= L`. See [`sliding_by`].
///
/// ```
/// use behave::event::{Event, UserId};
/// use behave::views::window::sliding;
/// use differential_dataflow::input::InputSession;
/// use std::sync::{Arc, Mutex};
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let out = seen.clone();
/// timely::execute_directly(move |worker| {
///     let mut input: InputSession<u64, Event, isize> = InputSession::new();
///     worker.dataflow::<u64, _, _>(|scope| {
///         let out = out.clone();
///         sliding(input.to_collection(scope), 3_600)
///             .inspect(move |(e, t, r)| out.lock().unwrap().push((e.time, *t, *r)));
///     });
///     input.advance_to(1_000);
///     input.insert(Event::new(UserId(1), 1_000, "view"));
///     input.close();
/// });
/// let mut seen = seen.lock().unwrap().clone();
/// seen.sort();
/// assert_eq!(seen, vec![(1_000, 1_000, 1), (1_000, 4_600, -1)]);
/// ```
pub fn sliding<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    d: i64,
) -> VecCollection<'s, u64, Event, Diff> {
    sliding_by(events, d, |event: &Event| event.time)
}
