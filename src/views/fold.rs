//! Per-key state folded over a collection in time order: the incremental form of a reduction
//! whose result depends on a few counters per key (events in a window, the periods a user was
//! seen in), for the totally ordered `u64` logical time of behave dataflows.
//!
//! A differential `reduce` keeps the whole input history of a key in an arrangement, replays it
//! at every time the key changes and arranges its output again. When a key's result is a
//! function of a small summary that updates in place (a count, a sum, a map from period to
//! multiplicity), [`fold_by_key`] keeps that summary instead, one per live key, applies each
//! update once, and emits only the rows that changed. Like `count_total` and `distinct_total`,
//! it needs a totally ordered time: it applies the updates of each time, in time order, once its
//! input frontier has passed that time.
//!
//! A key whose summary returns to its empty (default) value is dropped at once, so the state
//! holds nothing of a key whose updates were all retracted, e.g. a forgotten user.

use super::Diff;
use differential_dataflow::hashable::Hashable;
use differential_dataflow::{AsCollection, ExchangeData, VecCollection};
use std::collections::btree_map::{BTreeMap, Entry};
use std::collections::HashMap;
use std::hash::Hash;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;

/// Updates waiting for their time to complete: by time, the capability to emit at that time and
/// the `(key, value, diff)` updates.
type Pending<K, V> = BTreeMap<u64, (Capability<u64>, Vec<(K, V, Diff)>)>;

/// The collection of `rows(key, state)` over every key, where a key's `state` is
/// `S::default()` updated by `update(&mut state, &value, diff)` for each of the key's updates
/// at or before the time. The output is consolidated: at each time, one update per row whose
/// multiplicity changed.
///
/// `update` must make the state a function of the accumulated collection: updates of one time
/// arrive in no particular order, and a retraction must undo its insertion (counters and sums
/// do this). A key whose state is back to `S::default()` has no rows and is forgotten.
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
    mut update: U,
    mut rows: R,
) -> VecCollection<'s, u64, O, Diff>
where
    K: ExchangeData + Hash + Hashable<Output = u64>,
    V: ExchangeData,
    S: Default + PartialEq + 'static,
    O: Ord + Clone + 'static,
    U: FnMut(&mut S, &V, Diff) + 'static,
    R: FnMut(&K, &S, &mut Vec<O>) + 'static,
{
    let pact = Exchange::new(|((key, _), _, _): &((K, V), u64, Diff)| key.hashed());
    collection
        .inner
        .unary_frontier(pact, name, move |_, _| {
            // Updates not yet applied, by time, with the capability to emit at that time.
            let mut pending: Pending<K, V> = BTreeMap::new();
            let mut states: HashMap<K, S> = HashMap::new();
            let mut before: Vec<O> = Vec::new();
            let mut after: Vec<O> = Vec::new();
            move |(input, frontier), output| {
                input.for_each(|cap, batch| {
                    for ((key, value), time, diff) in batch.drain(..) {
                        let updates = match pending.entry(time) {
                            Entry::Occupied(entry) => entry.into_mut(),
                            Entry::Vacant(entry) => {
                                entry.insert((cap.delayed(&time, 0), Vec::new()))
                            }
                        };
                        updates.1.push((key, value, diff));
                    }
                });
                // A time is complete once the frontier has passed it.
                while let Some(entry) = pending.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let (cap, mut updates) = entry.remove();
                    updates.sort_by(|a, b| a.0.cmp(&b.0));
                    let mut session = output.session(&cap);
                    let time = *cap.time();
                    let mut rest = updates.as_slice();
                    while let Some((key, _, _)) = rest.first() {
                        let same = rest.partition_point(|(k, _, _)| k == key);
                        let (group, tail) = rest.split_at(same);
                        rest = tail;
                        before.clear();
                        after.clear();
                        let state = states.entry(key.clone()).or_default();
                        rows(key, state, &mut before);
                        for (_, value, diff) in group {
                            update(state, value, *diff);
                        }
                        rows(key, state, &mut after);
                        if *state == S::default() {
                            states.remove(key);
                        }
                        emit_changes(&mut before, &mut after, |row, diff| {
                            session.give((row, time, diff));
                        });
                    }
                }
            }
        })
        .as_collection()
}

/// Calls `give(row, diff)` for every row whose multiplicity differs between `before` and
/// `after`, with the difference (both are sorted here).
fn emit_changes<O: Ord + Clone>(before: &mut [O], after: &mut [O], mut give: impl FnMut(O, Diff)) {
    if before == after {
        return;
    }
    before.sort();
    after.sort();
    let mut changes: Vec<(O, Diff)> = before
        .iter()
        .map(|row| (row.clone(), -1))
        .chain(after.iter().map(|row| (row.clone(), 1)))
        .collect();
    differential_dataflow::consolidation::consolidate(&mut changes);
    for (row, diff) in changes {
        give(row, diff);
    }
}
