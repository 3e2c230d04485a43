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
use std::collections::BTreeSet;
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
/// time and what enters the window, e.g. a user id and a flag, so that the window holds a few
/// words per record rather than whole events.
///
/// ```
/// use behave::views::window::{sliding_project, Expiry};
/// use differential_dataflow::input::InputSession;
/// use std::sync::{Arc, Mutex};
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let out = seen.clone();
/// timely::execute_directly(move |worker| {
///     let mut input: InputSession<u64, (u64, i64), isize> = InputSession::new();
///     worker.dataflow::<u64, _, _>(|scope| {
///         let out = out.clone();
///         let users = sliding_project(
///             input.to_collection(scope),
///             10,
///             |(user, time): (u64, i64)| (time, user),
///             &Expiry::Exact,
///         );
///         users.consolidate().inspect(move |u| out.lock().unwrap().push(*u));
///     });
///     input.advance_to(5);
///     input.insert((7, 5));
///     input.insert((7, 3));
///     input.close();
/// });
/// let mut seen = seen.lock().unwrap().clone();
/// seen.sort_by_key(|(_, t, _)| *t);
/// assert_eq!(seen, vec![(7, 5, 2), (7, 13, -1), (7, 15, -1)]);
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
        Expiry::Ticks(ticks) => at_ticks(
            collection,
            ticks.clone(),
            "SlidingWindow",
            -1,
            move |record, time, now, later| {
                let (event_time, record) = project(record);
                let leaves = expiry(time, event_time, d);
                if leaves > time {
                    // Else in and out at the same time: never in the window.
                    now.push(record.clone());
                    later.push((leaves, record));
                }
            },
        )
        .as_collection(),
    }
}

/// How a record passes through the windows of [`passages`]: it enters all of them when it
/// arrives, and leaves window `w` (an index into the durations) when it is older than that.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Passage {
    /// The record arrived.
    Enter,
    /// The record left window number `.0`.
    Leave(u8),
}

/// The passages of records through several sliding windows at once: for each record `x` that
/// `project` maps to `Some((time, y, windows))`, `(y, Enter)` at the record's logical time and,
/// for each window `w` in the bit set `windows` (bit `w` for `durations[w]`), `(y, Leave(w))` at
/// the time `y` leaves a window of `durations[w]` seconds (as in [`sliding_by`]: at the exact
/// second or at the next tick), both with the record's diff. At any time, `y` is in window `w`
/// as many times as its `Enter`s minus its `Leave(w)`s say, and its `Enter`s alone count every
/// record ever seen: one pass, and one owed retraction per window, serve every view that
/// counts records in some windows and ever.
///
/// ```
/// use behave::views::window::{passages, Expiry, Passage};
/// use differential_dataflow::input::InputSession;
/// use std::sync::{Arc, Mutex};
///
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let out = seen.clone();
/// timely::execute_directly(move |worker| {
///     let mut input: InputSession<u64, (u64, i64), isize> = InputSession::new();
///     worker.dataflow::<u64, _, _>(|scope| {
///         let out = out.clone();
///         let durations = [10, 100];
///         passages(
///             input.to_collection(scope),
///             &durations,
///             |(user, time): (u64, i64)| Some((time, user, 0b11)),
///             &Expiry::Exact,
///         )
///         .inspect(move |u| out.lock().unwrap().push(*u));
///     });
///     input.advance_to(5);
///     input.insert((7, 5));
///     input.close();
/// });
/// let mut seen = seen.lock().unwrap().clone();
/// seen.sort_by_key(|(_, t, _)| *t);
/// assert_eq!(
///     seen,
///     vec![
///         ((7, Passage::Enter), 5, 1),
///         ((7, Passage::Leave(0)), 15, 1),
///         ((7, Passage::Leave(1)), 105, 1),
///     ]
/// );
/// ```
pub fn passages<'s, D, Y, F>(
    collection: VecCollection<'s, u64, D, Diff>,
    durations: &[i64],
    project: F,
    expiry_at: &Expiry<'s>,
) -> VecCollection<'s, u64, (Y, Passage), Diff>
where
    D: Clone + 'static,
    Y: Ord + Clone + 'static,
    F: Fn(D) -> Option<(Time, Y, u64)> + 'static,
{
    let durations: Vec<i64> = durations.iter().copied().take(64).collect();
    // The windows a record leaves, with the logical time it leaves each at.
    let leaving = move |windows: u64, arrived: u64, time: Time| {
        let durations = durations.clone();
        (0..durations.len())
            .filter(move |w| windows & (1 << w) != 0)
            .map(move |w| (Passage::Leave(w as u8), expiry(arrived, time, durations[w])))
    };
    match expiry_at {
        Expiry::Exact => collection
            .inner
            .flat_map(move |(data, time, diff)| {
                let mut updates = Vec::new();
                if let Some((event_time, y, windows)) = project(data) {
                    for (passage, leaves) in leaving(windows, time, event_time) {
                        updates.push(((y.clone(), passage), leaves, diff));
                    }
                    updates.push(((y, Passage::Enter), time, diff));
                }
                updates
            })
            .as_collection(),
        Expiry::Ticks(ticks) => at_ticks(
            collection,
            ticks.clone(),
            "Passages",
            1,
            move |record, time, now, later| {
                if let Some((event_time, y, windows)) = project(record) {
                    for (passage, leaves) in leaving(windows, time, event_time) {
                        later.push((leaves, (y.clone(), passage)));
                    }
                    now.push((y, Passage::Enter));
                }
            },
        )
        .as_collection(),
    }
}

/// The window operator at ticks: `split(record, time, now, later)` says what each update
/// `(record, time, diff)` gives at once (`now`, with `diff`) and what it gives later (`later`:
/// `(due, y)`, given with `leave_sign · diff` at the first tick at or after `due` whose time the
/// input has passed, or at once if `due` is not after `time`). A later update that cancels an
/// earlier one (e.g. a forgotten user's events) leaves memory at once (see [`Owed`]). Output is
/// not consolidated: the operators downstream (arrangements, [`fold_by_key`]) group by key
/// anyway.
///
/// [`fold_by_key`]: super::fold::fold_by_key
fn at_ticks<'s, D, Y, F>(
    collection: VecCollection<'s, u64, D, Diff>,
    ticks: StreamVec<'s, u64, ()>,
    name: &str,
    leave_sign: Diff,
    mut split: F,
) -> StreamVec<'s, u64, (Y, u64, Diff)>
where
    D: Clone + 'static,
    Y: Ord + Clone + 'static,
    F: FnMut(D, u64, &mut Vec<Y>, &mut Vec<(u64, Y)>) + 'static,
{
    collection
        .inner
        .binary_frontier(ticks, Pipeline, Pipeline, name, move |_, _| {
            // Retractions owed, stored negated (`-diff` for an insertion) so that a cancelling
            // update is the positive one.
            let mut owed: Owed<Y> = Owed::default();
            // Ticks not yet acted on, with the capability to emit at their time.
            let mut marks: BTreeMap<u64, Capability<u64>> = BTreeMap::new();
            let mut due: Vec<((Y, u64), Diff)> = Vec::new();
            let (mut now, mut later) = (Vec::new(), Vec::new());
            move |(data, data_frontier), (ticks, ticks_frontier), output| {
                data.for_each(|cap, batch| {
                    let mut session = output.session(&cap);
                    for (record, time, diff) in batch.drain(..) {
                        split(record, time, &mut now, &mut later);
                        for y in now.drain(..) {
                            session.give((y, time, diff));
                        }
                        for (leaves, y) in later.drain(..) {
                            if leaves <= time {
                                session.give((y, time, leave_sign * diff));
                            } else {
                                owed.owe(leaves, y, -diff);
                            }
                        }
                    }
                    owed.settle();
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
                    owed.take_due(tick, &mut due);
                    let mut session = output.session(&cap);
                    for ((record, time), diff) in due.drain(..) {
                        session.give((record, time, -leave_sign * diff));
                    }
                }
            }
        })
}

/// The retractions owed in one bucket of [`Owed`]: `((due, record), diff)`.
type Bucket<D> = Vec<((u64, D), Diff)>;

/// Seconds of due time per bucket of [`Owed`].
const BUCKET: u64 = 256;

/// The retractions a window owes, by the second they fall due, in buckets of [`BUCKET`]
/// seconds. Records mostly arrive in time order, so owing one is a push onto the last bucket,
/// which is kept out of the map (`tail`) so that the push needs no map search.
/// A bucket holding a cancelling update (a record retracted before it left, e.g. a forgotten
/// user's event) is consolidated at the next [`Owed::settle`], so cancelled retractions do not
/// stay in memory.
pub(crate) struct Owed<D> {
    buckets: BTreeMap<u64, Bucket<D>>,
    /// The latest bucket owed to, when it is later than every bucket of the map.
    tail: Option<(u64, Bucket<D>)>,
    /// Buckets holding a positive (cancelling) update.
    unsettled: BTreeSet<u64>,
}

impl<D> Default for Owed<D> {
    fn default() -> Self {
        Owed {
            buckets: BTreeMap::new(),
            tail: None,
            unsettled: BTreeSet::new(),
        }
    }
}

impl<D: Ord + Clone> Owed<D> {
    /// Owes `(record, diff)` at second `due`. A positive `diff` cancels an earlier retraction.
    pub(crate) fn owe(&mut self, due: u64, record: D, diff: Diff) {
        let bucket = due / BUCKET;
        if diff > 0 {
            self.unsettled.insert(bucket);
        }
        // Records mostly arrive in time order: most land in the tail.
        match &mut self.tail {
            Some((last, updates)) if *last == bucket => {
                updates.push(((due, record), diff));
                return;
            }
            Some((last, _)) if *last > bucket => {
                self.buckets
                    .entry(bucket)
                    .or_insert_with(|| Vec::with_capacity(64))
                    .push(((due, record), diff));
                return;
            }
            _ => {}
        }
        // A later bucket (or the first): it becomes the tail.
        self.untail();
        if self
            .buckets
            .last_key_value()
            .is_some_and(|(last, _)| *last > bucket)
        {
            self.buckets
                .entry(bucket)
                .or_insert_with(|| Vec::with_capacity(64))
                .push(((due, record), diff));
            return;
        }
        let mut updates = self
            .buckets
            .remove(&bucket)
            .unwrap_or_else(|| Vec::with_capacity(64));
        updates.push(((due, record), diff));
        self.tail = Some((bucket, updates));
    }

    /// How many owed records satisfy `which`.
    pub(crate) fn records(&self, which: &dyn Fn(&D) -> bool) -> usize {
        self.buckets
            .values()
            .chain(self.tail.as_ref().map(|(_, bucket)| bucket))
            .flatten()
            .filter(|((_, record), _)| which(record))
            .count()
    }

    /// Puts the tail back into the map of buckets.
    fn untail(&mut self) {
        if let Some((bucket, updates)) = self.tail.take() {
            self.buckets.insert(bucket, updates);
        }
    }

    /// Consolidates the buckets holding cancelling updates. A bucket stays unsettled while a
    /// positive update is left in it (its record's retraction has not arrived yet).
    pub(crate) fn settle(&mut self) {
        if self.unsettled.is_empty() {
            return;
        }
        self.untail();
        let buckets = &mut self.buckets;
        self.unsettled.retain(|bucket| {
            let Entry::Occupied(mut updates) = buckets.entry(*bucket) else {
                return false;
            };
            consolidate(updates.get_mut());
            let positive = updates.get().iter().any(|(_, diff)| *diff > 0);
            if updates.get().is_empty() {
                updates.remove();
            }
            positive
        });
    }

    /// Moves every retraction due at or before `tick` into `out`, at time `tick`.
    pub(crate) fn take_due(&mut self, tick: u64, out: &mut Vec<((D, u64), Diff)>) {
        if self
            .tail
            .as_ref()
            .is_some_and(|(bucket, _)| bucket.saturating_mul(BUCKET) <= tick)
        {
            self.untail();
        }
        while let Some(mut bucket) = self.buckets.first_entry() {
            if bucket.key().saturating_mul(BUCKET) > tick {
                break;
            }
            if bucket
                .key()
                .saturating_mul(BUCKET)
                .saturating_add(BUCKET - 1)
                <= tick
            {
                out.extend(
                    bucket
                        .remove()
                        .into_iter()
                        .map(|((_, record), diff)| ((record, tick), diff)),
                );
                continue;
            }
            // The bucket straddles the tick: take its due part and keep the rest.
            let updates = bucket.get_mut();
            let mut kept = Vec::with_capacity(updates.len());
            for ((due, record), diff) in updates.drain(..) {
                if due <= tick {
                    out.push(((record, tick), diff));
                } else {
                    kept.push(((due, record), diff));
                }
            }
            *updates = kept;
            if updates.is_empty() {
                bucket.remove();
            }
            break;
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One step on the owed retractions: owe `(due, record, diff)`, or take what is due by a tick.
    #[derive(Clone, Debug)]
    enum Step {
        Owe(u64, u8, Diff),
        Take(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u64..3_000, 0u8..4, prop_oneof![Just(-1), Just(1)])
                .prop_map(|(due, record, diff)| Step::Owe(due, record, diff)),
            1 => (0u64..3_000).prop_map(Step::Take),
        ]
    }

    proptest! {
        /// Owed retractions come out at the tick that covers them, consolidated, exactly as a
        /// plain map of `(due, record) -> diff` says, and a cancelled retraction leaves memory
        /// at the next settle.
        #[test]
        fn owed_matches_a_plain_map(steps in prop::collection::vec(step(), 0..300)) {
            let mut owed: Owed<u8> = Owed::default();
            let mut model: BTreeMap<(u64, u8), Diff> = BTreeMap::new();
            for step in steps {
                match step {
                    Step::Owe(due, record, diff) => {
                        owed.owe(due, record, diff);
                        *model.entry((due, record)).or_insert(0) += diff;
                        model.retain(|_, diff| *diff != 0);
                    }
                    Step::Take(tick) => {
                        let mut taken = Vec::new();
                        owed.take_due(tick, &mut taken);
                        consolidate(&mut taken);
                        let mut expected: Vec<((u8, u64), Diff)> = Vec::new();
                        model.retain(|&(due, record), diff| {
                            if due <= tick {
                                expected.push(((record, tick), *diff));
                            }
                            due > tick
                        });
                        consolidate(&mut expected);
                        prop_assert_eq!(taken, expected);
                    }
                }
                owed.settle();
                let mut held: Vec<((u64, u8), Diff)> = owed
                    .buckets
                    .values()
                    .chain(owed.tail.iter().map(|(_, updates)| updates))
                    .flatten()
                    .cloned()
                    .collect();
                let keys: std::collections::BTreeSet<(u64, u8)> =
                    held.iter().map(|(key, _)| *key).collect();
                consolidate(&mut held);
                let model_held: Vec<((u64, u8), Diff)> =
                    model.iter().map(|(key, diff)| (*key, *diff)).collect();
                prop_assert_eq!(&held, &model_held);
                prop_assert_eq!(keys, model.keys().copied().collect());
            }
        }
    }
}
