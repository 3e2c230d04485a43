//! Percentile segments, incrementally: the nearest-rank threshold over the histogram of every
//! user's metric, and the users at or above it, each maintained by a timely operator that
//! applies only what changed.
//!
//! The per-user metrics `(metric, user)` stay on the worker that owns the user. Their changes, as
//! `(metric, ±1)`, go to one worker, which keeps the histogram `metric -> users` with a cursor at
//! the threshold ([`Ranks`]): a change moves the cursor by the few distinct metrics it crosses,
//! whatever the number of users or of distinct metrics (the value metric has many). The
//! threshold's changes (one retraction and one insertion per time it moves) are broadcast back
//! to every worker, whose membership operator keeps its users ordered by metric: a user whose
//! metric changes costs a lookup, and a moved threshold costs the users between the old and the
//! new one.
//!
//! Both operators work at completed times only (time is totally ordered, as in
//! [`fold_by_key`](super::fold::fold_by_key)): the output at every time is exactly the
//! nearest-rank definition applied to the metrics at that time.

use super::fold::{file_all, Pending};
use super::{add_count, Diff};
use crate::event::{Sym, UserId};
use differential_dataflow::hashable::Hashable;
use differential_dataflow::{AsCollection, VecCollection};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::rc::Rc;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::{Broadcast, Map};

/// The histogram of the metrics of a set of users with a cursor at its nearest-rank
/// `percentile`-th percentile: the threshold and the number of users below it. Moving the cursor
/// after a change costs one map lookup per distinct metric it crosses.
///
/// ```
/// use behave::views::percentile::Ranks;
/// let mut ranks = Ranks::new(50);
/// for metric in [1, 1, 2, 5] {
///     ranks.add(metric, 1);
/// }
/// // n = 4: the 50th percentile has rank 2, the metric 1.
/// assert_eq!(ranks.threshold(), Some(1));
/// ranks.add(1, -1);
/// ranks.add(7, 1);
/// // 1, 2, 5, 7: rank 2 is the metric 2.
/// assert_eq!(ranks.threshold(), Some(2));
/// ```
#[derive(Clone, Debug)]
pub struct Ranks {
    /// Users per metric (no zero entries).
    counts: BTreeMap<i64, i64>,
    /// Users in all.
    users: i64,
    /// The last threshold, and the number of users with a smaller metric (kept up to date).
    cursor: Option<(i64, i64)>,
    percentile: i128,
}

impl Ranks {
    /// An empty histogram for the `percentile`-th percentile (clamped into `1..=100`).
    pub fn new(percentile: u32) -> Ranks {
        Ranks {
            counts: BTreeMap::new(),
            users: 0,
            cursor: None,
            percentile: i128::from(percentile.clamp(1, 100)),
        }
    }

    /// Adds `diff` users with `metric` (a negative `diff` removes them).
    pub fn add(&mut self, metric: i64, diff: i64) {
        if diff == 0 {
            return;
        }
        add_count(&mut self.counts, metric, diff);
        self.users += diff;
        if let Some((threshold, below)) = &mut self.cursor {
            if metric < *threshold {
                *below += diff;
            }
        }
    }

    /// The nearest-rank threshold: the smallest metric `m` such that at least
    /// `ceil(percentile/100 · n)` of the `n` users have a metric at most `m`; `None` when there
    /// are no users. Call it when the histogram holds no negative counts.
    pub fn threshold(&mut self) -> Option<i64> {
        if self.users <= 0 {
            self.cursor = None;
            return None;
        }
        let rank = (self.percentile * i128::from(self.users) + 99) / 100;
        let (mut at, mut below) = match self.cursor {
            Some(cursor) => cursor,
            None => (*self.counts.keys().next()?, 0),
        };
        loop {
            if i128::from(below) >= rank {
                // Too many users below: step down to the next smaller metric.
                let (&metric, &n) = self.counts.range(..at).next_back()?;
                at = metric;
                below -= n;
                continue;
            }
            let here = self.counts.get(&at).copied().unwrap_or(0);
            if i128::from(below + here) < rank {
                // Not enough users at or below: step up to the next larger metric.
                let (&metric, _) = self
                    .counts
                    .range((Bound::Excluded(at), Bound::Unbounded))
                    .next()?;
                below += here;
                at = metric;
                continue;
            }
            break;
        }
        self.cursor = Some((at, below));
        Some(at)
    }

    /// The number of distinct metrics held.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// Whether the histogram holds no users.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

/// The users each worker keeps for a percentile segment, ordered by metric: what the forget
/// audit scans ([`PercentileState::records_naming`]).
type ByMetric = BTreeMap<(i64, UserId), Diff>;

/// A handle on the operator state of percentile segments that names users: the users of each
/// worker ordered by metric. Every entry is live (entries leave when their count reaches zero).
#[derive(Clone, Default)]
pub struct PercentileState {
    held: Vec<Rc<RefCell<ByMetric>>>,
}

impl PercentileState {
    /// How many entries of the state name a user for which `user` holds.
    pub fn records_naming(&self, user: impl Fn(&UserId) -> bool) -> usize {
        self.held
            .iter()
            .map(|held| held.borrow().keys().filter(|(_, u)| user(u)).count())
            .sum()
    }

    /// Adds the state of another operator.
    pub fn extend(&mut self, other: PercentileState) {
        self.held.extend(other.held);
    }
}

/// The nearest-rank threshold of `metrics` (`(metric, user)`, each user present at most once) at
/// every time, as a collection holding one `threshold` while there is at least one user: kept
/// by one worker (chosen by `key`) from the histogram of metrics ([`Ranks`]), and broadcast to
/// every worker.
pub fn percentile_thresholds<'s>(
    metrics: VecCollection<'s, u64, (i64, UserId), Diff>,
    key: Sym,
    percentile: u32,
) -> VecCollection<'s, u64, i64, Diff> {
    let owner = key.hashed();
    metrics
        .inner
        .map(|((metric, _user), time, diff)| (metric, time, diff))
        .unary_frontier(
            Exchange::new(move |_: &(i64, u64, Diff)| owner),
            "PercentileThreshold",
            move |_, _| {
                let mut ranks = Ranks::new(percentile);
                let mut current: Option<i64> = None;
                let mut pending: Pending<i64> = BTreeMap::new();
                move |(input, frontier), output| {
                    input.for_each(|cap, batch| file_all(&mut pending, &cap, batch.drain(..)));
                    while let Some(entry) = pending.first_entry() {
                        if frontier.less_equal(entry.key()) {
                            break;
                        }
                        let (cap, updates) = entry.remove();
                        for (metric, diff) in updates {
                            ranks.add(metric, diff as i64);
                        }
                        let threshold = ranks.threshold();
                        if threshold != current {
                            let time = *cap.time();
                            let mut session = output.session(&cap);
                            if let Some(old) = current {
                                session.give((old, time, -1));
                            }
                            if let Some(new) = threshold {
                                session.give((new, time, 1));
                            }
                            current = threshold;
                        }
                    }
                }
            },
        )
        .broadcast()
        .as_collection()
}

/// The members `(key, user)` of a percentile segment: the users of `metrics` (`(metric, user)`,
/// each user at most once, on the worker that owns the user) whose metric is at or above the
/// threshold of `thresholds` (at most one record at a time, on every worker). Returns the state
/// that names users, for the forget audit.
pub fn at_or_above<'s>(
    metrics: VecCollection<'s, u64, (i64, UserId), Diff>,
    thresholds: VecCollection<'s, u64, i64, Diff>,
    key: Sym,
) -> (VecCollection<'s, u64, (Sym, UserId), Diff>, PercentileState) {
    let held: Rc<RefCell<ByMetric>> = Rc::default();
    let state = PercentileState {
        held: vec![held.clone()],
    };
    let members = metrics.inner.binary_frontier(
        thresholds.inner,
        Pipeline,
        Pipeline,
        "PercentileMembers",
        move |_, _| {
            let mut metric_updates: Pending<(i64, UserId)> = BTreeMap::new();
            let mut threshold_updates: Pending<i64> = BTreeMap::new();
            // The accumulated thresholds (one with count 1 while there are users).
            let mut thresholds: BTreeMap<i64, Diff> = BTreeMap::new();
            let mut changes: Vec<(UserId, Diff)> = Vec::new();
            move |(metrics, metrics_frontier), (limits, limits_frontier), output| {
                metrics.for_each(|cap, batch| file_all(&mut metric_updates, &cap, batch.drain(..)));
                limits
                    .for_each(|cap, batch| file_all(&mut threshold_updates, &cap, batch.drain(..)));
                loop {
                    let next = match (
                        metric_updates.keys().next(),
                        threshold_updates.keys().next(),
                    ) {
                        (Some(a), Some(b)) => *a.min(b),
                        (Some(a), None) => *a,
                        (None, Some(b)) => *b,
                        (None, None) => break,
                    };
                    if metrics_frontier.less_equal(&next) || limits_frontier.less_equal(&next) {
                        break;
                    }
                    let rows = metric_updates.remove(&next);
                    let limits = threshold_updates.remove(&next);
                    let old = current_threshold(&thresholds);
                    let mut held = held.borrow_mut();
                    let mut cap = None;
                    if let Some((c, rows)) = rows {
                        for ((metric, user), diff) in rows {
                            add_to(&mut held, (metric, user), diff);
                            if old.is_some_and(|t| metric >= t) {
                                changes.push((user, diff));
                            }
                        }
                        cap = Some(c);
                    }
                    if let Some((c, limits)) = limits {
                        for (threshold, diff) in limits {
                            add_count(&mut thresholds, threshold, diff);
                        }
                        cap = cap.or(Some(c));
                    }
                    let new = current_threshold(&thresholds);
                    shift(&held, old, new, &mut changes);
                    differential_dataflow::consolidation::consolidate(&mut changes);
                    if let Some(cap) = cap {
                        if !changes.is_empty() {
                            let mut session = output.session(&cap);
                            for (user, diff) in changes.drain(..) {
                                session.give(((key, user), next, diff));
                            }
                        }
                    }
                    changes.clear();
                }
            }
        },
    );
    (members.as_collection(), state)
}

/// The threshold in force: the one threshold with a positive count, if any.
fn current_threshold(thresholds: &BTreeMap<i64, Diff>) -> Option<i64> {
    thresholds
        .iter()
        .find(|(_, count)| **count > 0)
        .map(|(threshold, _)| *threshold)
}

/// Adds `diff` to the multiplicity of `entry`, dropping it at zero.
fn add_to(held: &mut ByMetric, entry: (i64, UserId), diff: Diff) {
    add_count(held, entry, diff);
}

/// The membership changes of moving the threshold from `old` to `new` (`None`: nobody is a
/// member): the users between the two enter or leave.
fn shift(held: &ByMetric, old: Option<i64>, new: Option<i64>, changes: &mut Vec<(UserId, Diff)>) {
    let (low, high, sign) = match (old, new) {
        (Some(old), Some(new)) if new < old => (new, Some(old), 1),
        (Some(old), Some(new)) if new > old => (old, Some(new), -1),
        (None, Some(new)) => (new, None, 1),
        (Some(old), None) => (old, None, -1),
        _ => return,
    };
    let start = Bound::Included((low, UserId(0)));
    let end = match high {
        Some(high) => Bound::Excluded((high, UserId(0))),
        None => Bound::Unbounded,
    };
    changes.extend(
        held.range((start, end))
            .map(|((_, user), count)| (*user, sign * count)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::segments::percentile_threshold;
    use proptest::prelude::*;

    proptest! {
        /// After any sequence of additions and removals (counts never negative), the cursor's
        /// threshold is the one a full pass over the histogram finds.
        #[test]
        fn ranks_match_a_full_pass(
            steps in prop::collection::vec(
                prop::collection::vec((-20i64..20, prop_oneof![Just(1i64), Just(-1)]), 1..8),
                1..60,
            ),
            percentile in 0u32..=101,
        ) {
            let mut ranks = Ranks::new(percentile);
            let mut model: BTreeMap<i64, i64> = BTreeMap::new();
            for step in steps {
                for (metric, diff) in step {
                    let present = model.get(&metric).copied().unwrap_or(0);
                    let diff = if present + diff < 0 { 1 } else { diff };
                    *model.entry(metric).or_insert(0) += diff;
                    ranks.add(metric, diff);
                }
                model.retain(|_, n| *n != 0);
                let expected = percentile_threshold(model.iter().map(|(m, n)| (*m, *n)), percentile);
                prop_assert_eq!(ranks.threshold(), expected);
                prop_assert_eq!(ranks.len(), model.len());
            }
        }
    }
}
