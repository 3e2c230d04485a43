//! The views: public functions from differential collections of [`Event`]s to collections of
//! results, usable inside any `worker.dataflow(...)`. The `behave` CLI is a thin layer over them.
//!
//! The sessions and engagement views exist in two forms: a plain one taking and returning
//! [`VecCollection`]s, and an `_arranged` one taking a shared arrangement (so several views
//! reuse one index) and returning the arrangement of its output. Both work at any timestamp.
//! For `u64` event-second time, [`history::history_views`] gives both views' rows from one
//! per-user fold, with less work; the runtime uses it. The runtime audits each view's state
//! (arrangements, and the folds' and operators' in-place state) after forget requests.
//!
//! [`Event`]: crate::event::Event

pub mod cosine;
pub mod engagement;
pub mod fold;
pub mod history;
pub mod percentile;
pub mod popular;
pub mod rank;
pub mod recommend;
pub mod retention;
pub mod segments;
pub mod sessions;
pub mod similarity;
pub mod window;

pub use engagement::{engagement, engagement_arranged, Engagement};
pub use recommend::{recommendations, Recommendation};
pub use retention::{retention, retention_table, Period, RetentionRow, RetentionSpec};
pub use segments::{segment_sizes, Segment};
pub use sessions::{sessions, sessions_arranged, Session};
pub use similarity::{item_similarity, similarity, Similar};

use crate::event::{Event, Time, UserId};
use differential_dataflow::lattice::Lattice;
use differential_dataflow::operators::arrange::{Arranged, TraceAgent};
use differential_dataflow::trace::implementations::ValSpine;
use differential_dataflow::VecCollection;
use std::cmp::Ordering;
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use timely::progress::Timestamp;

/// The diff type of every behave collection: multiplicities.
pub type Diff = isize;

/// An arrangement keyed by `K` with values `V`, shareable between views.
pub type ArrangedBy<'s, K, V, T> = Arranged<'s, TraceAgent<ValSpine<K, V, T, Diff>>>;

/// Each user's event times, arranged by user: the shared index of sessions and engagement.
pub type UserTimes<'s, T> = ArrangedBy<'s, UserId, Time, T>;

/// Arranges each user's event times by user, once, for every view that reads them.
pub fn user_times<'s, T>(events: VecCollection<'s, T, Event, Diff>) -> UserTimes<'s, T>
where
    T: Timestamp + Lattice,
{
    events
        .map(|event| (event.user, event.time))
        .arrange_by_key_named("UserTimes")
}

/// Reads an arrangement back as a collection of `(key, value)` pairs.
pub fn flatten<'s, K, V, T>(arranged: ArrangedBy<'s, K, V, T>) -> VecCollection<'s, T, (K, V), Diff>
where
    T: Timestamp + Lattice,
    K: differential_dataflow::ExchangeData + differential_dataflow::Hashable,
    V: differential_dataflow::ExchangeData,
{
    arranged.as_collection(|k: &K, v: &V| (k.clone(), v.clone()))
}

/// Adds `diff` to the count of `key` in `map`, dropping the entry at zero (one search).
pub(crate) fn add_count<K: Ord, C>(map: &mut BTreeMap<K, C>, key: K, diff: C)
where
    C: Copy + Default + PartialEq + std::ops::AddAssign,
{
    match map.entry(key) {
        Entry::Occupied(mut count) => {
            *count.get_mut() += diff;
            if *count.get() == C::default() {
                count.remove();
            }
        }
        Entry::Vacant(slot) => {
            if diff != C::default() {
                slot.insert(diff);
            }
        }
    }
}

/// The first `n` of `pool` in `order`, sorted: a selection, then a sort of only those `n`.
///
/// ```
/// use behave::views::first_n_by;
/// assert_eq!(first_n_by(vec![5, 1, 4, 2, 3], 2, |a: &i32, b: &i32| b.cmp(a)), vec![5, 4]);
/// ```
pub fn first_n_by<T>(mut pool: Vec<T>, n: usize, order: impl Fn(&T, &T) -> Ordering) -> Vec<T> {
    if pool.len() > n && n > 0 {
        pool.select_nth_unstable_by(n - 1, &order);
    }
    pool.truncate(n);
    pool.sort_unstable_by(order);
    pool
}

/// The first `n` in `order` of `ranked` (already sorted in `order`) and `more` (in any order),
/// sorted: `more` is sorted alone and merged in, so a ranking that gains a few entries costs no
/// sort of the entries it kept.
///
/// ```
/// use behave::views::merge_first_n_by;
/// let by_value = |a: &i32, b: &i32| a.cmp(b);
/// assert_eq!(merge_first_n_by(vec![1, 4, 6], vec![5, 0], 4, by_value), vec![0, 1, 4, 5]);
/// ```
pub fn merge_first_n_by<T>(
    ranked: Vec<T>,
    more: Vec<T>,
    n: usize,
    order: impl Fn(&T, &T) -> Ordering,
) -> Vec<T> {
    let more = first_n_by(more, n, &order);
    let mut out = Vec::with_capacity(n.min(ranked.len() + more.len()));
    let (mut ranked, mut more) = (ranked.into_iter().peekable(), more.into_iter().peekable());
    while out.len() < n {
        let next = match (ranked.peek(), more.peek()) {
            (Some(a), Some(b)) if order(b, a) == Ordering::Less => more.next(),
            (Some(_), _) => ranked.next(),
            (None, _) => more.next(),
        };
        match next {
            Some(x) => out.push(x),
            None => break,
        }
    }
    out
}

/// Calls `give(x, -1)` for each element of `old` and `give(y, 1)` for each element of `new`
/// that the other does not match one for one: the change from the multiset `old` to `new`,
/// both sorted, in ascending order.
///
/// ```
/// use behave::views::sorted_changes;
/// let mut changes = Vec::new();
/// sorted_changes(&[1, 2, 2, 5], &[2, 3, 5], |x, diff| changes.push((x, diff)));
/// assert_eq!(changes, vec![(1, -1), (2, -1), (3, 1)]);
/// ```
pub fn sorted_changes<T: Ord + Clone>(old: &[T], new: &[T], mut give: impl FnMut(T, Diff)) {
    let (mut i, mut j) = (0, 0);
    loop {
        match (old.get(i), new.get(j)) {
            (Some(x), Some(y)) if x == y => {
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x > y => {
                give(y.clone(), 1);
                j += 1;
            }
            (Some(x), _) => {
                give(x.clone(), -1);
                i += 1;
            }
            (None, Some(y)) => {
                give(y.clone(), 1);
                j += 1;
            }
            (None, None) => break,
        }
    }
}
