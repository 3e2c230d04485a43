//! A `reduce` for `u64` (totally ordered) time that keeps each key's input in place instead of
//! in arrangements.
//!
//! Differential's `reduce` keeps its input and output in arrangements: every update is sorted,
//! batched and merged, and the logic re-reads the key's values from the trace. For a key with
//! thousands of values that change a few at a time (a user's recommendation candidates), that
//! bookkeeping costs far more than the logic. [`reduce_in_place`] keeps, per key, the
//! consolidated multiset of its values in a hash map and the output it last emitted; at each
//! logical time, once its input frontier has passed it (in time order), it applies the time's
//! updates, re-runs the logic for the keys that changed and emits the difference between the
//! old and new output at that time: the same collection `reduce` produces.
//!
//! Privacy: a value leaves the map the moment its multiplicity reaches zero, and a key leaves
//! once it has neither values nor output; [`InPlaceState::keys_matching`] counts what is held
//! for given keys, for the runtime's forget audit.

use super::cosine::FxHasher;
use super::Diff;
use differential_dataflow::{AsCollection, ExchangeData, Hashable, VecCollection};
use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hash};
use std::rc::Rc;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::Capability;

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// One key's values (consolidated, non-zero) and the output last emitted for it.
struct Group<V, O> {
    input: FxMap<V, Diff>,
    output: Vec<O>,
}

impl<V, O> Default for Group<V, O> {
    fn default() -> Self {
        Group {
            input: FxMap::default(),
            output: Vec::new(),
        }
    }
}

/// The per-key state of one [`reduce_in_place`] instance on this worker, for the forget audit.
pub struct InPlaceState<K, V, O> {
    groups: Rc<RefCell<FxMap<K, Group<V, O>>>>,
}

impl<K, V, O> Clone for InPlaceState<K, V, O> {
    fn clone(&self) -> Self {
        InPlaceState {
            groups: self.groups.clone(),
        }
    }
}

impl<K: Eq + Hash, V, O> InPlaceState<K, V, O> {
    /// How many values and output records are held for keys for which `key` holds.
    pub fn keys_matching(&self, key: impl Fn(&K) -> bool) -> usize {
        self.groups
            .borrow()
            .iter()
            .filter(|(k, _)| key(k))
            .map(|(_, g)| g.input.len() + g.output.len())
            .sum()
    }

    /// How many values and output records are held in all.
    pub fn len(&self) -> usize {
        self.keys_matching(|_| true)
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Updates held until the input frontier passes their time, with the capability to emit then.
type Held<D> = (Capability<u64>, Vec<(D, Diff)>);

/// The output of [`reduce_in_place`] and a handle on its state.
pub type Reduced<'s, K, V, O> = (VecCollection<'s, u64, (K, O), Diff>, InPlaceState<K, V, O>);

/// For every key, `logic(key, values)` over the key's values with their (positive or negative,
/// never zero) multiplicities, as `(key, output)` records of multiplicity 1: differential's
/// `reduce` with the values kept in place (see the module docs). `logic` sees the values in no
/// particular order, so it must not depend on their order.
pub fn reduce_in_place<'s, K, V, O, L>(
    collection: VecCollection<'s, u64, (K, V), Diff>,
    name: &str,
    mut logic: L,
) -> Reduced<'s, K, V, O>
where
    K: ExchangeData + Hash,
    V: ExchangeData + Hash,
    O: ExchangeData,
    L: FnMut(&K, &[(V, Diff)]) -> Vec<O> + 'static,
{
    let state = InPlaceState {
        groups: Rc::new(RefCell::new(FxMap::default())),
    };
    let groups = state.groups.clone();
    let output = collection
        .inner
        .unary_frontier(
            Exchange::new(|((key, _), _, _): &((K, V), u64, Diff)| key.hashed()),
            name,
            move |_, _| {
                let mut pending: BTreeMap<u64, Held<(K, V)>> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each(|cap, batch| {
                        for (record, time, diff) in batch.drain(..) {
                            pending
                                .entry(time)
                                .or_insert_with(|| (cap.delayed(&time, 0), Vec::new()))
                                .1
                                .push((record, diff));
                        }
                    });
                    while let Some(entry) = pending.first_entry() {
                        let time = *entry.key();
                        if frontier.less_equal(&time) {
                            break;
                        }
                        let (cap, updates) = entry.remove();
                        let changes = apply(&mut groups.borrow_mut(), updates, &mut logic);
                        let mut session = output.session(&cap);
                        for (record, diff) in changes {
                            session.give((record, time, diff));
                        }
                    }
                }
            },
        )
        .as_collection();
    (output, state)
}

/// Applies one time's updates and returns the output changes of the keys they touched.
fn apply<K, V, O, L>(
    groups: &mut FxMap<K, Group<V, O>>,
    updates: Vec<((K, V), Diff)>,
    logic: &mut L,
) -> Vec<((K, O), Diff)>
where
    K: Ord + Hash + Clone,
    V: Eq + Hash + Clone,
    O: Ord + Clone,
    L: FnMut(&K, &[(V, Diff)]) -> Vec<O>,
{
    let mut dirty: Vec<K> = Vec::new();
    for ((key, value), diff) in updates {
        if diff == 0 {
            continue;
        }
        let group = match groups.entry(key.clone()) {
            Entry::Occupied(group) => group.into_mut(),
            Entry::Vacant(group) => group.insert(Group::default()),
        };
        match group.input.entry(value) {
            Entry::Occupied(mut copies) => {
                *copies.get_mut() += diff;
                if *copies.get() == 0 {
                    copies.remove();
                }
            }
            Entry::Vacant(copies) => {
                copies.insert(diff);
            }
        }
        dirty.push(key);
    }
    dirty.sort_unstable();
    dirty.dedup();
    let mut changes = Vec::new();
    let mut values = Vec::new();
    for key in dirty {
        let Entry::Occupied(mut group) = groups.entry(key.clone()) else {
            continue;
        };
        values.clear();
        values.extend(group.get().input.iter().map(|(v, r)| (v.clone(), *r)));
        let mut new = if values.is_empty() {
            Vec::new()
        } else {
            logic(&key, &values)
        };
        new.sort_unstable();
        let old = std::mem::replace(&mut group.get_mut().output, new);
        let new = &group.get().output;
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < new.len() {
            match (old.get(i), new.get(j)) {
                (Some(x), Some(y)) if x == y => {
                    i += 1;
                    j += 1;
                }
                (Some(x), Some(y)) if x < y => {
                    changes.push(((key.clone(), x.clone()), -1));
                    i += 1;
                }
                (Some(x), None) => {
                    changes.push(((key.clone(), x.clone()), -1));
                    i += 1;
                }
                (_, Some(y)) => {
                    changes.push(((key.clone(), y.clone()), 1));
                    j += 1;
                }
                (None, None) => break,
            }
        }
        if group.get().input.is_empty() && group.get().output.is_empty() {
            group.remove();
        }
    }
    changes
}
