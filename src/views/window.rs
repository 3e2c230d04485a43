//! Sliding windows over event time, done the differential way: a record enters when it arrives
//! and is retracted `d` seconds of event time after its own time.
//!
//! The logical time of a behave dataflow is event time in seconds (`u64`, see DESIGN "Time"), and
//! an event enters its collection at a logical time at or after its event time. The window
//! operators here rely on that: they are defined for `u64` logical times only.
//!
//! When retractions take effect is an [`Expiry`]: at the exact second (every logical time is a
//! possible snapshot), or at the next tick of a clock (the times a runtime takes snapshots at,
//! e.g. its epochs), which keeps the number of distinct logical times, the main cost of
//! differential operators, down to the number of ticks.

use super::Diff;
use crate::event::{Event, Time};
use differential_dataflow::consolidation::consolidate;
use differential_dataflow::{AsCollection, VecCollection};
use std::collections::btree_map::{BTreeMap, Entry};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

/// When the records of a sliding window are retracted.
#[derive(Clone)]
pub enum Expiry<'s> {
    /// At the exact second a record leaves: the window is exact at every logical time.
    Exact,
    /// At the first tick of this clock at or after the second a record leaves: the window is
    /// exact at every tick. Each worker must see every tick (one `()` per tick time on every
    /// worker); the behave runtime ticks once per epoch, and at the as-of time.
    Ticks(StreamVec<'s, u64, ()>),
}

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
/// `(x, max(t, time_of(x) + d), -r)` ([`Expiry::Exact`]), or with that retraction moved to the
/// first tick at or after its time ([`Expiry::Ticks`]: exact at every tick).
///
/// A window of `d <= 0` is always empty. Retractions (e.g. a forgotten user's events) retract
/// their window copy too, whether the window has passed or not.
///
/// ```
/// use behave::views::window::{sliding_by, Expiry};
/// use differential_dataflow::input::InputSession;
/// use std::sync::{Arc, Mutex};
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let out = seen.clone();
/// timely::execute_directly(move |worker| {
///     let mut input: InputSession<u64, (&'static str, i64), isize> = InputSession::new();
///     worker.dataflow::<u64, _, _>(|scope| {
///         let out = out.clone();
///         sliding_by(input.to_collection(scope), 10, |x: &(&str, i64)| x.1, &Expiry::Exact)
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
    expiry_at: &Expiry<'s>,
) -> VecCollection<'s, u64, D, Diff>
where
    D: Ord + Clone + 'static,
    F: Fn(&D) -> Time + 'static,
{
    sliding_project(collection, d, move |x| (time_of(&x), x), expiry_at)
}

/// [`sliding_by`] for the part of each record a view needs: `project(x)` gives the record's event
/// time and what enters the window, e.g. a user id, so that records of one user that enter or
/// leave at the same logical time are passed on as one update.
///
/// ```
/// use behave::views::window::{sliding_project, Expiry};
/// use differential_dataflow::input::InputSession;
/// use std::sync::{Arc, Mutex};
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let out = seen.clone();
/// timely::execute_directly(move |worker| {
///     let mut input: InputSession<u64, (&'static str, i64), isize> = InputSession::new();
///     worker.dataflow::<u64, _, _>(|scope| {
///         let out = out.clone();
///         let users = sliding_project(
///             input.to_collection(scope),
///             10,
///             |(user, time): (&str, i64)| (time, user),
///             &Expiry::Exact,
///         );
///         users.consolidate().inspect(move |u| out.lock().unwrap().push(u.clone()));
///     });
///     input.advance_to(5);
///     input.insert(("a", 5));
///     input.insert(("a", 3));
///     input.close();
/// });
/// let mut seen = seen.lock().unwrap().clone();
/// seen.sort_by_key(|(_, t, _)| *t);
/// assert_eq!(seen, vec![("a", 5, 2), ("a", 13, -1), ("a", 15, -1)]);
/// ```
pub fn sliding_project<'s, D, D2, F>(
    collection: VecCollection<'s, u64, D, Diff>,
    d: i64,
    project: F,
    expiry_at: &Expiry<'s>,
) -> VecCollection<'s, u64, D2, Diff>
where
    D: Clone + 'static,
    D2: Ord + Clone + 'static,
    F: Fn(D) -> (Time, D2) + 'static,
{
    match expiry_at {
        // Every emitted time is at least the update's own time, which is at least the time of
        // the capability it travels under, so the collection's timestamp invariant holds.
        Expiry::Exact => collection
            .inner
            .flat_map(move |(data, time, diff)| {
                let (event_time, data) = project(data);
                let leaves = expiry(time, event_time, d);
                let copy = data.clone();
                [(data, time, diff), (copy, leaves, -diff)]
            })
            .as_collection(),
        Expiry::Ticks(ticks) => sliding_at_ticks(collection, d, project, ticks.clone()),
    }
}

/// [`sliding_project`] with retractions at ticks: each record is passed on at once (records of
/// one input batch consolidated), and its retraction waits, consolidated with others of the same
/// record and expiry (so a forgotten user's pending retractions cancel and leave), until the
/// first tick at or after its expiry whose time the input has passed; the retractions due at a
/// tick leave consolidated too.
fn sliding_at_ticks<'s, D, D2, F>(
    collection: VecCollection<'s, u64, D, Diff>,
    d: i64,
    project: F,
    ticks: StreamVec<'s, u64, ()>,
) -> VecCollection<'s, u64, D2, Diff>
where
    D: Clone + 'static,
    D2: Ord + Clone + 'static,
    F: Fn(D) -> (Time, D2) + 'static,
{
    collection
        .inner
        .binary_frontier(ticks, Pipeline, Pipeline, "SlidingWindow", move |_, _| {
            // Retractions owed, by (expiry, record).
            let mut pending: BTreeMap<(u64, D2), Diff> = BTreeMap::new();
            // Ticks not yet acted on, with the capability to emit at their time.
            let mut marks: BTreeMap<u64, Capability<u64>> = BTreeMap::new();
            let mut passed: Vec<((D2, u64), Diff)> = Vec::new();
            move |(data, data_frontier), (ticks, ticks_frontier), output| {
                data.for_each(|cap, batch| {
                    for (record, time, diff) in batch.drain(..) {
                        let (event_time, record) = project(record);
                        let leaves = expiry(time, event_time, d);
                        if leaves <= time {
                            continue; // In and out at the same time: never in the window.
                        }
                        match pending.entry((leaves, record.clone())) {
                            Entry::Vacant(owed) => {
                                owed.insert(-diff);
                            }
                            Entry::Occupied(mut owed) => {
                                *owed.get_mut() -= diff;
                                if *owed.get() == 0 {
                                    owed.remove();
                                }
                            }
                        }
                        passed.push(((record, time), diff));
                    }
                    consolidate(&mut passed);
                    let mut session = output.session(&cap);
                    for ((record, time), diff) in passed.drain(..) {
                        session.give((record, time, diff));
                    }
                });
                ticks.for_each(|cap, batch| {
                    batch.clear();
                    if let Some(cap) = cap.retain_least(0) {
                        marks.entry(*cap.time()).or_insert(cap);
                    }
                });
                // A tick is acted on once no earlier tick and no record at or before it can
                // still arrive.
                while let Some(entry) = marks.first_entry() {
                    let tick = *entry.key();
                    if data_frontier.less_equal(&tick) || ticks_frontier.less_than(&tick) {
                        break;
                    }
                    let cap = entry.remove();
                    while let Some(owed) = pending.first_entry() {
                        if owed.key().0 > tick {
                            break;
                        }
                        let ((_, record), diff) = owed.remove_entry();
                        passed.push(((record, tick), diff));
                    }
                    consolidate(&mut passed);
                    let mut session = output.session(&cap);
                    for ((record, time), diff) in passed.drain(..) {
                        session.give((record, time, diff));
                    }
                }
            }
        })
        .as_collection()
}

/// The events of the last `d` seconds: at logical time (as-of) `L` the result holds exactly the
/// events with `L - d < time <= L`. See [`sliding_by`].
///
/// ```
/// use behave::event::{Event, UserId};
/// use behave::views::window::{sliding, Expiry};
/// use differential_dataflow::input::InputSession;
/// use std::sync::{Arc, Mutex};
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let out = seen.clone();
/// timely::execute_directly(move |worker| {
///     let mut input: InputSession<u64, Event, isize> = InputSession::new();
///     worker.dataflow::<u64, _, _>(|scope| {
///         let out = out.clone();
///         sliding(input.to_collection(scope), 3_600, &Expiry::Exact)
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
    expiry_at: &Expiry<'s>,
) -> VecCollection<'s, u64, Event, Diff> {
    sliding_by(events, d, |event: &Event| event.time, expiry_at)
}
