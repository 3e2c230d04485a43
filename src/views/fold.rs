//! Per-key state folded over a collection in time order: the incremental form of a reduction
//! whose result depends on a few counters per key (events in a window, the periods a user was
//! seen in), for the totally ordered `u64` logical time of behave dataflows.
//!
//! A differential `reduce` keeps the whole input history of a key in an arrangement, replays it
//! at every time the key changes and arranges its output again. When a key's result is a
//! function of a small summary that updates in place (a count, a sum, a map from period to
//! multiplicity), [`fold_by_key`] keeps that summary instead, one per live key, applies each
//! update once, and emits only the rows that changed. Like `count_total` and `distinct_total`,
//! it needs a totally ordered time: updates at the input frontier apply as they arrive (every
//! earlier time is complete), and later ones wait until the frontier reaches their time.
//!
//! A key whose summary returns to its empty (default) value is dropped at once, so the state
//! holds nothing of a key whose updates were all retracted, e.g. a forgotten user.

use super::window::{expiry, passages, Expiry, Owed, Passage};
use super::{sorted_changes, Diff};
use crate::event::Time;
use differential_dataflow::hashable::Hashable;
use differential_dataflow::{AsCollection, ExchangeData, VecCollection};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::hash::Hash;
use std::rc::Rc;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::{Capability, InputCapability};

/// Updates waiting for their time: by time, the capability to give at that time and the
/// `(data, diff)` updates.
pub(crate) type Pending<D> = BTreeMap<u64, (Capability<u64>, Vec<(D, Diff)>)>;

/// An exit of a record from a window at a time: `((key, value, window), time)`.
type Exit<K, V> = ((K, V, u8), u64);

/// Files `(data, time, diff)` under its time in `pending`, retaining a capability for the time
/// from `cap` (that of the batch it came in).
pub(crate) fn file<D>(
    pending: &mut Pending<D>,
    cap: &InputCapability<u64>,
    data: D,
    time: u64,
    diff: Diff,
) {
    pending
        .entry(time)
        .or_insert_with(|| (cap.delayed(&time, 0), Vec::new()))
        .1
        .push((data, diff));
}

/// Files every update `(data, time, diff)` of `updates` as [`file`] does, looking each time up
/// once per run of updates at that time (a batch mostly holds one time).
pub(crate) fn file_all<D>(
    pending: &mut Pending<D>,
    cap: &InputCapability<u64>,
    updates: impl Iterator<Item = (D, u64, Diff)>,
) {
    let mut updates = updates.peekable();
    while let Some((data, time, diff)) = updates.next() {
        let list = &mut pending
            .entry(time)
            .or_insert_with(|| (cap.delayed(&time, 0), Vec::new()))
            .1;
        list.push((data, diff));
        while let Some((data, _, diff)) = updates.next_if(|(_, next, _)| *next == time) {
            list.push((data, diff));
        }
    }
}

/// Starts the round of updates at the frontier `open` (the batch's capability `cap` allows
/// giving there) if updates were applied and no round is in progress.
fn start_round(
    round: &mut Option<Capability<u64>>,
    applied: bool,
    open: Option<u64>,
    cap: &InputCapability<u64>,
) {
    // Updates apply only at the frontier (an input holding data is never done).
    if applied && round.is_none() {
        let time = open.or_else(|| cap.least().copied()).unwrap_or_default();
        *round = Some(cap.delayed(&time, 0));
    }
}

/// Gives the row changes of the round that `keys` settles at the time of capability `cap`.
macro_rules! settle {
    ($keys:expr, $rows:expr, $output:expr, $cap:expr) => {{
        let cap: &Capability<u64> = $cap;
        let time = *cap.time();
        let mut session = $output.session(cap);
        $keys.settle(&mut $rows, |row, diff| session.give((row, time, diff)));
    }};
}

/// The collection of `rows(key, state)` over every key, where a key's `state` is
/// `S::default()` updated by `update(&mut state, &value, diff)` for each of the key's updates
/// at or before the time. Only the rows of keys that changed are touched: each time gives one
/// update per row whose multiplicity changed at that time, once the input frontier passes it
/// (however many batches the time's updates came in, a key's rows are compared once).
///
/// `update` must make the state a function of the accumulated collection: updates of one time
/// arrive in no particular order and in several batches, and a retraction must undo its
/// insertion (counters and sums do this); `rows` must accept the states in between (e.g. a
/// negative count while a retraction is ahead of its insertion). A key whose state is back to
/// `S::default()` has no rows and is forgotten.
///
/// ```
/// use behave::views::fold::fold_by_key;
/// use differential_dataflow::input::InputSession;
/// use std::sync::{Arc, Mutex};
///
/// // Users with at least two events, from a counter per user.
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let out = seen.clone();
/// timely::execute_directly(move |worker| {
///     let mut input: InputSession<u64, (u64, ()), isize> = InputSession::new();
///     worker.dataflow::<u64, _, _>(|scope| {
///         let out = out.clone();
///         fold_by_key(
///             input.to_collection(scope),
///             "AtLeastTwo",
///             |count: &mut isize, _: &(), diff| *count += diff,
///             |user: &u64, count: &isize, rows: &mut Vec<u64>| {
///                 if *count >= 2 {
///                     rows.push(*user);
///                 }
///             },
///         )
///         .inspect(move |update| out.lock().unwrap().push(*update));
///     });
///     input.advance_to(1);
///     input.insert((7, ()));
///     input.advance_to(2);
///     input.insert((7, ()));
///     input.advance_to(3);
///     input.remove((7, ()));
///     input.close();
/// });
/// let seen = seen.lock().unwrap().clone();
/// assert_eq!(seen, vec![(7, 2, 1), (7, 3, -1)]);
/// ```
pub fn fold_by_key<'s, K, V, S, O, U, R>(
    collection: VecCollection<'s, u64, (K, V), Diff>,
    name: &str,
    update: U,
    rows: R,
) -> VecCollection<'s, u64, O, Diff>
where
    K: ExchangeData + Hash + Hashable<Output = u64>,
    V: ExchangeData,
    S: Default + PartialEq + 'static,
    O: Ord + Clone + 'static,
    U: FnMut(&mut S, &V, Diff) + 'static,
    R: FnMut(&K, &S, &mut Vec<O>) + 'static,
{
    fold_by_key_audited(collection, name, update, rows).0
}

/// [`fold_by_key`], with a handle on the keys its state holds on this worker, for audits
/// (e.g. that no state is left of a forgotten user).
pub fn fold_by_key_audited<'s, K, V, S, O, U, R>(
    collection: VecCollection<'s, u64, (K, V), Diff>,
    name: &str,
    mut update: U,
    mut rows: R,
) -> (VecCollection<'s, u64, O, Diff>, FoldKeys<K>)
where
    K: ExchangeData + Hash + Hashable<Output = u64>,
    V: ExchangeData,
    S: Default + PartialEq + 'static,
    O: Ord + Clone + 'static,
    U: FnMut(&mut S, &V, Diff) + 'static,
    R: FnMut(&K, &S, &mut Vec<O>) + 'static,
{
    let shared: Rc<RefCell<Keys<K, S, O>>> = Rc::default();
    let held = FoldKeys::of(&shared);
    let pact = Exchange::new(|((key, _), _, _): &((K, V), u64, Diff)| key.hashed());
    let folded = collection
        .inner
        .unary_frontier(pact, name, move |_, _| {
            // Updates at times after the frontier, by time, with the capability to emit there.
            let mut pending: Pending<(K, V)> = BTreeMap::new();
            // The round in progress: updates at the frontier applied since the last settle, to
            // be given at this capability's time once the frontier passes it.
            let mut round: Option<Capability<u64>> = None;
            move |(input, frontier), output| {
                let mut keys = shared.borrow_mut();
                // Every update before the frontier has been applied, so updates at the frontier
                // apply at once; later ones wait until the frontier reaches them. A time's row
                // changes are given once the frontier passes it, so a key changed by several
                // batches of one time gives one change.
                let open = frontier.frontier().first().copied();
                if let Some(cap) = round.take_if(|cap| open.is_none_or(|open| *cap.time() < open)) {
                    settle!(keys, rows, output, &cap);
                }
                while let Some(entry) = pending.first_entry() {
                    if open.is_some_and(|open| *entry.key() > open) {
                        break;
                    }
                    let (cap, updates) = entry.remove();
                    for ((key, value), diff) in updates {
                        keys.apply(key, &value, diff, &mut update, &mut rows);
                    }
                    if open == Some(*cap.time()) {
                        round.get_or_insert(cap);
                    } else {
                        settle!(keys, rows, output, &cap);
                    }
                }
                input.for_each(|cap, batch| {
                    let mut applied = false;
                    for ((key, value), time, diff) in batch.drain(..) {
                        if open.is_none_or(|open| time <= open) {
                            keys.apply(key, &value, diff, &mut update, &mut rows);
                            applied = true;
                        } else {
                            file(&mut pending, &cap, (key, value), time, diff);
                        }
                    }
                    start_round(&mut round, applied, open, &cap);
                });
            }
        })
        .as_collection();
    (folded, held)
}

/// [`fold_by_key`] over the [`passages`] of records through sliding windows: each record
/// `(key, (event time, value))`, whose bit set of windows (bit `w` for `durations[w]`) is
/// `windows_of(&value)`, updates its key's state once as it arrives
/// (`update(state, value, Passage::Enter, diff)`) and once as it leaves each of its windows
/// (`update(state, value, Passage::Leave(w), diff)`), at the times [`passages`] gives them.
///
/// With [`Expiry::Ticks`] the window and the fold are one operator: the exits a record owes wait
/// in the operator (see [`passages`]; they keep the key and value, not the time) and are applied
/// to the states in place at the tick they fall due, so an event costs one trip through the
/// dataflow rather than one per passage. With
/// [`Expiry::Exact`] this is [`passages`] followed by [`fold_by_key`].
///
/// ```
/// use behave::views::fold::fold_passages;
/// use behave::views::window::{Expiry, Passage};
/// use differential_dataflow::input::InputSession;
/// use std::sync::{Arc, Mutex};
///
/// // Users with an event within the last 100 seconds, among users ever seen.
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let out = seen.clone();
/// timely::execute_directly(move |worker| {
///     let mut input: InputSession<u64, (u64, (i64, ())), isize> = InputSession::new();
///     worker.dataflow::<u64, _, _>(|scope| {
///         let out = out.clone();
///         fold_passages(
///             input.to_collection(scope),
///             &[100],
///             |_: &()| 1,
///             &Expiry::Exact,
///             "Recent",
///             |recent: &mut isize, _: &(), passage, diff| match passage {
///                 Passage::Enter => *recent += diff,
///                 Passage::Leave(_) => *recent -= diff,
///             },
///             |user: &u64, recent: &isize, rows: &mut Vec<u64>| {
///                 if *recent > 0 {
///                     rows.push(*user);
///                 }
///             },
///         )
///         .inspect(move |update| out.lock().unwrap().push(*update));
///     });
///     input.advance_to(10);
///     input.insert((7, (10, ())));
///     input.close();
/// });
/// let seen = seen.lock().unwrap().clone();
/// assert_eq!(seen, vec![(7, 10, 1), (7, 110, -1)]);
/// ```
#[allow(clippy::too_many_arguments)]
pub fn fold_passages<'s, K, V, S, O, W, U, R>(
    collection: VecCollection<'s, u64, (K, (Time, V)), Diff>,
    durations: &[i64],
    windows_of: W,
    expiry_at: &Expiry<'s>,
    name: &str,
    update: U,
    rows: R,
) -> VecCollection<'s, u64, O, Diff>
where
    K: ExchangeData + Hash + Hashable<Output = u64>,
    V: ExchangeData,
    S: Default + PartialEq + 'static,
    O: Ord + Clone + 'static,
    W: Fn(&V) -> u64 + 'static,
    U: FnMut(&mut S, &V, Passage, Diff) + 'static,
    R: FnMut(&K, &S, &mut Vec<O>) + 'static,
{
    fold_passages_audited(
        collection, durations, windows_of, expiry_at, name, update, rows,
    )
    .0
}

/// [`fold_passages`], with a handle on the keys its state and its owed exits hold on this
/// worker, for audits.
#[allow(clippy::too_many_arguments)]
pub fn fold_passages_audited<'s, K, V, S, O, W, U, R>(
    collection: VecCollection<'s, u64, (K, (Time, V)), Diff>,
    durations: &[i64],
    windows_of: W,
    expiry_at: &Expiry<'s>,
    name: &str,
    mut update: U,
    rows: R,
) -> (VecCollection<'s, u64, O, Diff>, FoldKeys<K>)
where
    K: ExchangeData + Hash + Hashable<Output = u64>,
    V: ExchangeData,
    S: Default + PartialEq + 'static,
    O: Ord + Clone + 'static,
    W: Fn(&V) -> u64 + 'static,
    U: FnMut(&mut S, &V, Passage, Diff) + 'static,
    R: FnMut(&K, &S, &mut Vec<O>) + 'static,
{
    let ticks = match expiry_at {
        Expiry::Ticks(ticks) => ticks.clone(),
        Expiry::Exact => {
            let passed = passages(
                collection,
                durations,
                move |(key, (time, value)): (K, (Time, V))| {
                    let windows = windows_of(&value);
                    Some((time, (key, value), windows))
                },
                expiry_at,
            )
            .map(|((key, value), passage)| (key, (value, passage)));
            return fold_by_key_audited(
                passed,
                name,
                move |state: &mut S, (value, passage): &(V, Passage), diff| {
                    update(state, value, *passage, diff)
                },
                rows,
            );
        }
    };
    let durations: Vec<i64> = durations.iter().copied().take(64).collect();
    let pact = Exchange::new(|((key, _), _, _): &((K, (Time, V)), u64, Diff)| key.hashed());
    let mut rows = rows;
    let keys: Rc<RefCell<Keys<K, S, O>>> = Rc::default();
    // Exits owed, negated (an insertion owes `-diff`), by the second they fall due: one queue
    // per window, as each window's exits mostly fall due in arrival order.
    let owed: Rc<RefCell<OwedExits<K, V>>> = Rc::new(RefCell::new(
        durations.iter().map(|_| Owed::default()).collect(),
    ));
    let held = {
        let (states, owed) = (FoldKeys::of(&keys), owed.clone());
        FoldKeys {
            count: Rc::new(move |which: &dyn Fn(&K) -> bool| {
                states.count(which)
                    + owed
                        .borrow()
                        .iter()
                        .map(|queue| queue.records(&|(key, _, _)| which(key)))
                        .sum::<usize>()
            }),
        }
    };
    let folded = collection
        .inner
        .binary_frontier(ticks, pact, Pipeline, name, move |_, _| {
            // As in `fold_by_key`: updates after the frontier, the states, the round in progress.
            let mut pending: Pending<(K, (Time, V))> = BTreeMap::new();
            let mut round: Option<Capability<u64>> = None;
            // Ticks not yet acted on, with the capability to give at their time.
            let mut marks: BTreeMap<u64, Capability<u64>> = BTreeMap::new();
            let mut due: Vec<(Exit<K, V>, Diff)> = Vec::new();
            move |(input, frontier), (ticks, ticks_frontier), output| {
                let (mut keys, mut owed) = (keys.borrow_mut(), owed.borrow_mut());
                ticks.for_each(|cap, batch| {
                    batch.clear();
                    if let Some(cap) = cap.retain_least(0) {
                        marks.entry(*cap.time()).or_insert(cap);
                    }
                });
                // Every update waits in `pending` until it can apply, in time order with ticks.
                input.for_each(|cap, batch| file_all(&mut pending, &cap, batch.drain(..)));
                // Updates apply at the least time either input may still bring: a tick before a
                // record's time must act first, so that each change is given at its own time.
                let data_open = frontier.frontier().first().copied();
                let open = match (data_open, ticks_frontier.frontier().first().copied()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if let Some(cap) = round.take_if(|cap| open.is_none_or(|open| *cap.time() < open)) {
                    settle!(keys, rows, output, &cap);
                }
                // Pending updates that can apply and ticks that can act, in time order (updates
                // first at equal times).
                loop {
                    let update_at = pending
                        .first_key_value()
                        .map(|(time, _)| *time)
                        .filter(|time| open.is_none_or(|open| *time <= open));
                    let tick_at = marks
                        .first_key_value()
                        .map(|(time, _)| *time)
                        .filter(|tick| {
                            data_open.is_none_or(|open| *tick < open)
                                && !ticks_frontier.less_than(tick)
                        });
                    let cap = match (update_at, tick_at) {
                        (Some(time), tick) if tick.is_none_or(|tick| time <= tick) => {
                            let Some((_, (cap, updates))) = pending.pop_first() else {
                                break;
                            };
                            for ((key, value), diff) in updates {
                                arrive(
                                    &mut keys,
                                    &mut owed,
                                    &durations,
                                    &windows_of,
                                    &mut update,
                                    &mut rows,
                                    (key, value, time, diff),
                                );
                            }
                            owed.iter_mut().for_each(Owed::settle);
                            cap
                        }
                        (_, Some(tick)) => {
                            let Some((_, cap)) = marks.pop_first() else {
                                break;
                            };
                            for owed in owed.iter_mut() {
                                owed.take_due(tick, &mut due);
                            }
                            for (((key, value, w), _), diff) in due.drain(..) {
                                keys.apply(
                                    key,
                                    &value,
                                    -diff,
                                    &mut |state: &mut S, value: &V, diff| {
                                        update(state, value, Passage::Leave(w), diff)
                                    },
                                    &mut rows,
                                );
                            }
                            cap
                        }
                        _ => break,
                    };
                    // A time still open joins the round in progress; an earlier one is given now.
                    match &round {
                        Some(current) if current.time() == cap.time() => {}
                        _ if open == Some(*cap.time()) => round = Some(cap),
                        _ => settle!(keys, rows, output, &cap),
                    }
                }
            }
        })
        .as_collection();
    (folded, held)
}

/// Applies a record's arrival at `time` to its key's state, and its exits from the windows it
/// has already left (e.g. a late record, or a window of `d <= 0`); owes the other exits.
fn arrive<K, V, S, O, R>(
    keys: &mut Keys<K, S, O>,
    owed: &mut [Owed<(K, V, u8)>],
    durations: &[i64],
    windows_of: &impl Fn(&V) -> u64,
    update: &mut impl FnMut(&mut S, &V, Passage, Diff),
    rows: &mut R,
    (key, (event_time, value), time, diff): (K, (Time, V), u64, Diff),
) where
    K: Clone + Ord + Hash,
    V: Clone + Ord,
    S: Default + PartialEq,
    O: Ord + Clone,
    R: FnMut(&K, &S, &mut Vec<O>),
{
    let windows = windows_of(&value);
    let mut step = |keys: &mut Keys<K, S, O>, passage: Passage, rows: &mut R| {
        keys.apply(
            key.clone(),
            &value,
            diff,
            &mut |state: &mut S, value: &V, diff| update(state, value, passage, diff),
            rows,
        )
    };
    step(keys, Passage::Enter, rows);
    for (w, d) in durations.iter().enumerate() {
        if windows & (1 << w) == 0 {
            continue;
        }
        let leaves = expiry(time, event_time, *d);
        if leaves <= time {
            step(keys, Passage::Leave(w as u8), rows);
        } else {
            owed[w].owe(leaves, (key.clone(), value.clone(), w as u8), -diff);
        }
    }
}

/// Counts the keys for which a predicate holds.
type KeyCounter<K> = dyn Fn(&dyn Fn(&K) -> bool) -> usize;

/// The exits a [`fold_passages`] owes, one queue per window.
type OwedExits<K, V> = Vec<Owed<(K, V, u8)>>;

/// A handle on the keys a fold's state holds on one worker (see [`fold_by_key_audited`]): every
/// key present is live, since a key whose state is back to the default leaves at once.
pub struct FoldKeys<K> {
    count: Rc<KeyCounter<K>>,
}

impl<K> Clone for FoldKeys<K> {
    fn clone(&self) -> Self {
        FoldKeys {
            count: self.count.clone(),
        }
    }
}

impl<K: 'static> FoldKeys<K> {
    fn of<S: 'static, O: 'static>(keys: &Rc<RefCell<Keys<K, S, O>>>) -> FoldKeys<K> {
        let keys = keys.clone();
        FoldKeys {
            count: Rc::new(move |which: &dyn Fn(&K) -> bool| {
                keys.borrow().states.keys().filter(|key| which(key)).count()
            }),
        }
    }

    /// How many keys of the state satisfy `which`.
    pub fn count(&self, which: impl Fn(&K) -> bool) -> usize {
        (self.count)(&which)
    }
}

/// The states of the live keys, and the keys changed since the last [`Keys::settle`] with their
/// rows before the change.
struct Keys<K, S, O> {
    /// Each live key's state and the round it was last changed in.
    states: HashMap<K, (S, u64), foldhash::fast::RandomState>,
    /// The current round: the updates since the last settle.
    round: u64,
    /// Keys changed this round, with the range of their former rows in `before`.
    touched: Vec<(K, usize, usize)>,
    before: Vec<O>,
    after: Vec<O>,
}

impl<K, S, O> Default for Keys<K, S, O> {
    fn default() -> Self {
        Keys {
            states: HashMap::default(),
            round: 1,
            touched: Vec::new(),
            before: Vec::new(),
            after: Vec::new(),
        }
    }
}

impl<K, S, O> Keys<K, S, O>
where
    K: Clone + Eq + Hash,
    S: Default + PartialEq,
    O: Ord + Clone,
{
    /// Applies one update to `key`'s state, noting its rows first if it is the key's first
    /// update this round.
    fn apply<V>(
        &mut self,
        key: K,
        value: &V,
        diff: Diff,
        update: &mut impl FnMut(&mut S, &V, Diff),
        rows: &mut impl FnMut(&K, &S, &mut Vec<O>),
    ) {
        let (state, round) = self
            .states
            .entry(key.clone())
            .or_insert_with(|| (S::default(), 0));
        if *round != self.round {
            *round = self.round;
            let start = self.before.len();
            rows(&key, state, &mut self.before);
            self.touched.push((key, start, self.before.len()));
        }
        update(state, value, diff);
    }

    /// Gives the row changes of every key changed this round, drops keys back at the empty
    /// state, and starts a new round.
    fn settle(
        &mut self,
        rows: &mut impl FnMut(&K, &S, &mut Vec<O>),
        mut give: impl FnMut(O, Diff),
    ) {
        for (key, start, end) in self.touched.drain(..) {
            let Some((state, _)) = self.states.get(&key) else {
                continue;
            };
            self.after.clear();
            rows(&key, state, &mut self.after);
            if *state == S::default() {
                self.states.remove(&key);
            }
            emit_changes(&mut self.before[start..end], &mut self.after, &mut give);
        }
        self.before.clear();
        self.round += 1;
    }
}

/// Calls `give(row, diff)` for every row whose multiplicity differs between `before` and
/// `after`, with the difference (both are sorted here).
fn emit_changes<O: Ord + Clone>(before: &mut [O], after: &mut [O], give: impl FnMut(O, Diff)) {
    if before == after {
        return;
    }
    before.sort();
    after.sort();
    sorted_changes(before, after, give);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key whose updates are all retracted leaves the state at the settle of that round, and
    /// its rows are retracted.
    #[test]
    fn a_key_back_at_empty_is_dropped() {
        let mut keys: Keys<u64, i64, u64> = Keys::default();
        let mut update = |count: &mut i64, _: &(), diff: Diff| *count += diff as i64;
        let mut rows = |key: &u64, count: &i64, rows: &mut Vec<u64>| {
            if *count > 0 {
                rows.push(*key);
            }
        };
        let mut given = Vec::new();
        for key in [1, 2, 1] {
            keys.apply(key, &(), 1, &mut update, &mut rows);
        }
        keys.settle(&mut rows, |row, diff| given.push((row, diff)));
        given.sort();
        assert_eq!(given, vec![(1, 1), (2, 1)]);
        assert_eq!(keys.states.len(), 2);
        given.clear();
        for key in [1, 1, 2] {
            keys.apply(key, &(), -1, &mut update, &mut rows);
        }
        keys.settle(&mut rows, |row, diff| given.push((row, diff)));
        given.sort();
        assert_eq!(given, vec![(1, -1), (2, -1)]);
        assert!(keys.states.is_empty(), "no state is left of retracted keys");
        assert!(keys.touched.is_empty() && keys.before.is_empty());
    }
}
