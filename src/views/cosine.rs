//! The incremental core of both similarity views: top-`k` cosine neighbours of every member over
//! group memberships, kept by two timely operators whose state is updated in place.
//!
//! A differential formulation (self-join, `count`, two joins with the set sizes, a `reduce` per
//! member) restates every scored pair whose inputs changed and re-reads all of a member's
//! candidates whenever one of them changes. Forgetting a user then costs hundreds of
//! milliseconds on MovieLens 100k: the user count of each of their items changes, so every item
//! pair involving one of those items is restated and every item re-ranks its ~1,600 candidates.
//! The operators here compute exactly the same collection with work proportional to what
//! changed:
//!
//! 1. **Pairs** (exchanged by group): keeps each group's members and turns each membership
//!    change into overlap changes `((a, b), ±1)` for the other members of the group (or every
//!    pair of the group, when the change moves its size across `max_group`), summed per pair
//!    and time before they leave the worker.
//! 2. **Top-k** (exchanged by member; set sizes broadcast to every worker): keeps, per member,
//!    its candidates with their overlaps and its best `2k` candidates, ranked: a prefix of the
//!    ranking of all its candidates, whose first `k` are the neighbours emitted. At each time it
//!    applies the overlap changes (sorted, one member at a time) and the size changes, and
//!    updates only the members whose best can change: a changed candidate that neither was among
//!    a member's best nor now ranks before the last of them stays behind them, and the member is
//!    not visited for it. A visited member's unchanged best entries keep their order, and a
//!    changed candidate joins them only if it ranks before the last of them. A forgotten
//!    neighbour or a lower overlap thus costs no rescan; only when fewer than `k` ranked entries
//!    remain are all of a member's candidates ranked again. A member whose set size changed is
//!    looked at by the members that rank it among their best, or that it now passes: the
//!    members that have it as a candidate are its own candidates (overlaps are symmetric) when
//!    it is ranked on the same worker, and a reverse index holds them for the others. It emits
//!    the difference between the old and new top `k` at that time.
//!
//! Both operators process the updates of one logical time at a time, in time order, once their
//! inputs' frontiers have passed it (the time is `u64`, totally ordered), so the output at each
//! time is the change of the top-`k` set at that time, consolidated, exactly what a `reduce`
//! would emit. Rankings use [`closer`] (exact integer cross-multiplication, ties by the smaller
//! neighbour), so no worker count or arrival order changes a result.
//!
//! Privacy: every map entry is dropped the moment its count reaches zero (a group without
//! members, a member with set size zero, a pair with overlap zero, a member with neither
//! candidates nor neighbours), so once a forgotten user's memberships are retracted no state
//! names them. [`CosineState::records_naming`] counts what the state holds of given ids, which
//! the runtime adds to its end-of-run audit.

use super::fold::{file_all, Pending};
use super::similarity::{closer, Similar};
use super::{first_n_by, merge_first_n_by, Diff};
use differential_dataflow::{AsCollection, ExchangeData, Hashable, VecCollection};
use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::rc::Rc;
use timely::dataflow::channels::pact::{Exchange, ParallelizationContract, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

/// A fast hasher for the small integer keys of the operator state (the FxHash function, with
/// rustc-hash 2's final rotation): iteration order never reaches an output (outputs are sets,
/// ranked by a total order).
///
/// The rotation matters: a multiplication's low bits depend only on its input's low bits, and
/// hash tables pick buckets by the low bits, so item symbols (FNV-1a of short names, whose low
/// bits vary little) would pile into a few buckets without it.
#[derive(Clone, Copy, Default)]
pub struct FxHasher(u64);

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(FX_SEED);
    }

    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The members of each group (state of the pairs operator, on the group's worker).
type Groups<G, M> = FxMap<G, BTreeMap<M, Diff>>;

/// One member's side of the top-k operator.
#[derive(Clone, Debug)]
struct Subject<M> {
    /// Candidates `neighbour -> overlap` (only non-zero overlaps are kept).
    candidates: FxMap<M, i64>,
    /// The best candidates, best first, at most [`depth`]`(k)` of them: a prefix of the ranking
    /// of all candidates (every candidate not here ranks after every entry here). Its first `k`
    /// entries are the neighbours emitted; the others let an entry leave without a rescan.
    best: Vec<Similar<M>>,
    /// Whether `best` holds every candidate.
    complete: bool,
    /// A copy of the last entry of `best` when `best` does not hold every candidate: what a
    /// changed candidate must rank before to enter it. Kept here, beside the candidates, since
    /// most changes are checked against it alone.
    bound: Option<Similar<M>>,
}

impl<M> Default for Subject<M> {
    fn default() -> Self {
        Subject {
            candidates: FxMap::default(),
            best: Vec::new(),
            complete: true,
            bound: None,
        }
    }
}

impl<M> Subject<M> {
    /// The neighbours emitted: the first `k` of `best`.
    fn top(&self, k: usize) -> &[Similar<M>] {
        &self.best[..self.best.len().min(k)]
    }
}

/// How many ranked candidates a member keeps for a top `k`: twice `k`, so that up to `k`
/// entries can leave or fall behind (a forgotten neighbour, a lower overlap) before the member's
/// candidates are ranked again.
fn depth(k: usize) -> usize {
    2 * k
}

/// The state of the top-k operator on one worker.
#[derive(Clone, Debug)]
struct Ranking<M> {
    /// Every member's set size (sizes are broadcast: every worker knows all of them).
    sizes: FxMap<M, u64>,
    /// The members this worker ranks.
    subjects: FxMap<M, Subject<M>>,
    /// For each neighbour ranked on another worker, the local members that have it as a
    /// candidate, with the overlap (a copy of the candidate's), for its size changes. A
    /// neighbour ranked here needs none: overlaps are symmetric, so its own candidates are the
    /// members that have it as a candidate.
    reverse: FxMap<M, FxMap<M, i64>>,
    /// Which members this worker ranks.
    route: Route,
}

/// Which members a worker of the top-k operator ranks: the routing of its input (timely's
/// exchange sends a record to worker `hash % workers`).
#[derive(Clone, Copy, Debug)]
struct Route {
    worker: u64,
    workers: u64,
}

impl Route {
    /// Whether `member` is ranked by this worker.
    fn here<M: Hashable<Output = u64>>(self, member: &M) -> bool {
        self.workers == 1 || member.hashed() % self.workers == self.worker
    }
}

impl<M> Ranking<M> {
    /// The state of worker `worker` of `workers`, empty.
    fn new(worker: usize, workers: usize) -> Self {
        Ranking {
            sizes: FxMap::default(),
            subjects: FxMap::default(),
            reverse: FxMap::default(),
            route: Route {
                worker: worker as u64,
                workers: workers as u64,
            },
        }
    }
}

/// The top-`k` neighbours `(member, Similar { neighbour, .. })` of every member.
pub type Neighbours<'s, M> = VecCollection<'s, u64, (M, Similar<M>), Diff>;

/// A handle on the state of one [`top_k_cosine_with_state`] instance on this worker, to audit
/// it for records of forgotten users.
pub struct CosineState<G, M> {
    groups: Rc<RefCell<Groups<G, M>>>,
    ranking: Rc<RefCell<Ranking<M>>>,
}

impl<G, M> Clone for CosineState<G, M> {
    fn clone(&self) -> Self {
        CosineState {
            groups: self.groups.clone(),
            ranking: self.ranking.clone(),
        }
    }
}

impl<G: Eq + Hash, M: Eq + Hash + Copy> CosineState<G, M> {
    /// How many entries of the state name a group for which `group` holds or a member for which
    /// `member` holds: memberships, set sizes, members ranked, candidates, emitted neighbours
    /// and reverse-index entries. Zero for ids whose memberships were all retracted.
    pub fn records_naming(&self, group: impl Fn(&G) -> bool, member: impl Fn(&M) -> bool) -> usize {
        let mut found = 0;
        for (g, members) in self.groups.borrow().iter() {
            found += if group(g) {
                members.len()
            } else {
                members.keys().filter(|m| member(m)).count()
            };
        }
        let ranking = self.ranking.borrow();
        found += ranking.sizes.keys().filter(|m| member(m)).count();
        for (a, subject) in &ranking.subjects {
            if member(a) {
                found += 1 + subject.candidates.len() + subject.best.len();
            } else {
                found += subject.candidates.keys().filter(|b| member(b)).count();
                found += subject.best.iter().filter(|s| member(&s.neighbour)).count();
            }
        }
        for (b, subjects) in &ranking.reverse {
            found += if member(b) {
                subjects.len()
            } else {
                subjects.keys().filter(|a| member(a)).count()
            };
        }
        found
    }

    /// Number of entries held (memberships, sizes, candidates, neighbours, reverse entries).
    pub fn len(&self) -> usize {
        self.records_naming(|_| true, |_| true)
    }

    /// Whether the state holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Top-`k` cosine neighbours of every member over group memberships `(group, member)` (a set:
/// every multiplicity 0 or 1), groups with more than `max_group` members generating no pairs,
/// with a handle on the operators' state for the forget audit. See the module docs.
pub fn top_k_cosine_with_state<'s, G, M>(
    memberships: VecCollection<'s, u64, (G, M), Diff>,
    k: usize,
    max_group: u64,
) -> (Neighbours<'s, M>, CosineState<G, M>)
where
    G: ExchangeData + Hash,
    M: ExchangeData + Hash + Copy,
{
    let state = CosineState {
        groups: Rc::new(RefCell::new(Groups::default())),
        ranking: Rc::new(RefCell::new(Ranking::new(
            memberships.inner.scope().index(),
            memberships.inner.scope().peers(),
        ))),
    };
    let sizes = memberships
        .inner
        .clone()
        .map(|((_, member), time, diff)| (member, time, diff))
        .broadcast();
    let groups = state.groups.clone();
    let pairs = memberships.inner.unary_frontier(
        Exchange::new(|((group, _), _, _): &((G, M), u64, Diff)| group.hashed()),
        "CosinePairs",
        move |_, _| {
            let mut pending: Pending<(G, M)> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each(|cap, batch| file_all(&mut pending, &cap, batch.drain(..)));
                while let Some(entry) = pending.first_entry() {
                    let time = *entry.key();
                    if frontier.less_equal(&time) {
                        break;
                    }
                    let (cap, updates) = entry.remove();
                    let deltas = pair_deltas(&mut groups.borrow_mut(), updates, max_group);
                    let mut session = output.session(&cap);
                    for ((a, b), diff) in deltas {
                        if diff != 0 {
                            session.give(((a, b), time, diff));
                            session.give(((b, a), time, diff));
                        }
                    }
                }
            }
        },
    );
    let ranking = state.ranking.clone();
    let top = in_time_order(
        pairs,
        sizes,
        Exchange::new(|((a, _), _, _): &((M, M), u64, Diff)| a.hashed()),
        Pipeline,
        "CosineTopK",
        move |pairs, sizes| ranking.borrow_mut().apply(pairs, sizes, k),
    )
    .as_collection();
    (top, state)
}

/// Two update streams gathered per logical time and handed to `logic` one time at a time, in
/// time order, once neither input can still bring an update at or before that time; `logic`
/// returns the output changes at that time. For the `u64` logical time of behave dataflows.
pub(crate) fn in_time_order<'s, A, B, O, PA, PB, F>(
    left: StreamVec<'s, u64, (A, u64, Diff)>,
    right: StreamVec<'s, u64, (B, u64, Diff)>,
    left_pact: PA,
    right_pact: PB,
    name: &str,
    mut logic: F,
) -> StreamVec<'s, u64, (O, u64, Diff)>
where
    A: Clone + 'static,
    B: Clone + 'static,
    O: Clone + 'static,
    PA: ParallelizationContract<u64, Vec<(A, u64, Diff)>>,
    PB: ParallelizationContract<u64, Vec<(B, u64, Diff)>>,
    F: FnMut(Vec<(A, Diff)>, Vec<(B, Diff)>) -> Vec<(O, Diff)> + 'static,
{
    left.binary_frontier(right, left_pact, right_pact, name, move |_, _| {
        type Held<A, B> = (Capability<u64>, Vec<(A, Diff)>, Vec<(B, Diff)>);
        let mut pending: BTreeMap<u64, Held<A, B>> = BTreeMap::new();
        move |(left, left_frontier), (right, right_frontier), output| {
            left.for_each(|cap, batch| {
                for (record, time, diff) in batch.drain(..) {
                    pending
                        .entry(time)
                        .or_insert_with(|| (cap.delayed(&time, 0), Vec::new(), Vec::new()))
                        .1
                        .push((record, diff));
                }
            });
            right.for_each(|cap, batch| {
                for (record, time, diff) in batch.drain(..) {
                    pending
                        .entry(time)
                        .or_insert_with(|| (cap.delayed(&time, 0), Vec::new(), Vec::new()))
                        .2
                        .push((record, diff));
                }
            });
            while let Some(entry) = pending.first_entry() {
                let time = *entry.key();
                if left_frontier.less_equal(&time) || right_frontier.less_equal(&time) {
                    break;
                }
                let (cap, left, right) = entry.remove();
                let mut session = output.session(&cap);
                for (record, diff) in logic(left, right) {
                    session.give((record, time, diff));
                }
            }
        }
    })
}

/// Applies one time's membership changes to `groups` and returns the overlap changes they
/// cause, summed per unordered pair `(a, b)` with `a < b` (the caller emits both orders).
fn pair_deltas<G, M>(
    groups: &mut Groups<G, M>,
    mut updates: Vec<((G, M), Diff)>,
    max_group: u64,
) -> FxMap<(M, M), Diff>
where
    G: Ord + Hash + Clone,
    M: Ord + Hash + Copy,
{
    updates.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut deltas: FxMap<(M, M), Diff> = FxMap::default();
    let mut add = |a: M, b: M, diff: Diff| {
        *deltas.entry((a.min(b), a.max(b))).or_insert(0) += diff;
    };
    let mut i = 0;
    while i < updates.len() {
        // One (group, member) at a time, its diffs summed.
        let mut j = i;
        let mut diff = 0;
        while j < updates.len() && updates[j].0 == updates[i].0 {
            diff += updates[j].1;
            j += 1;
        }
        let (group, member) = updates[i].0.clone();
        i = j;
        if diff == 0 {
            continue;
        }
        let members = groups.entry(group.clone()).or_default();
        let before = members.get(&member).copied().unwrap_or(0);
        let after = before + diff;
        let size = members.len() as u64;
        let eligible = |n: u64| n <= max_group;
        if before <= 0 && after > 0 {
            // The member joins a group of `size`.
            if eligible(size + 1) {
                for &other in members.keys() {
                    add(member, other, 1);
                }
            } else if eligible(size) {
                // The group grows past the cap: its pairs leave.
                let all: Vec<M> = members.keys().copied().collect();
                for (x, &a) in all.iter().enumerate() {
                    for &b in &all[x + 1..] {
                        add(a, b, -1);
                    }
                }
            }
        } else if before > 0 && after <= 0 {
            // The member leaves a group of `size` (itself included).
            if eligible(size) {
                for &other in members.keys() {
                    if other != member {
                        add(member, other, -1);
                    }
                }
            } else if eligible(size - 1) {
                // The group shrinks to the cap: its remaining pairs enter.
                let all: Vec<M> = members.keys().copied().filter(|m| *m != member).collect();
                for (x, &a) in all.iter().enumerate() {
                    for &b in &all[x + 1..] {
                        add(a, b, 1);
                    }
                }
            }
        }
        if after == 0 {
            members.remove(&member);
        } else {
            members.insert(member, after);
        }
        if members.is_empty() {
            groups.remove(&group);
        }
    }
    deltas
}

impl<M: Ord + Hash + Copy> Ranking<M> {
    /// Applies one time's overlap changes `((a, b), diff)` (for the members `a` of this worker)
    /// and set-size changes (of every member), and returns the changes of the top-`k` output.
    fn apply(
        &mut self,
        mut pairs: Vec<((M, M), Diff)>,
        mut sizes: Vec<(M, Diff)>,
        k: usize,
    ) -> Vec<((M, Similar<M>), Diff)> {
        // Members whose ranking may change, with the candidates that changed and their overlap
        // at this time (0: no longer a candidate); a candidate may be listed twice.
        let mut dirty: FxMap<M, Vec<(M, i64)>> = FxMap::default();
        sizes.sort_unstable_by_key(|a| a.0);
        let mut resized = Vec::new();
        let mut i = 0;
        while i < sizes.len() {
            let member = sizes[i].0;
            let mut diff = 0;
            while i < sizes.len() && sizes[i].0 == member {
                diff += sizes[i].1;
                i += 1;
            }
            if diff == 0 {
                continue;
            }
            match self.sizes.entry(member) {
                Entry::Occupied(mut size) => {
                    let new = *size.get() as i64 + diff as i64;
                    if new <= 0 {
                        size.remove();
                    } else {
                        *size.get_mut() = new as u64;
                    }
                }
                Entry::Vacant(size) => {
                    if diff > 0 {
                        size.insert(diff as u64);
                    }
                }
            }
            resized.push((member, diff));
        }
        // A member's size before this time (`resized` is sorted by member).
        let old_size = |sizes: &FxMap<M, u64>, b: M| {
            let size = sizes.get(&b).copied().unwrap_or(0);
            match resized.binary_search_by(|r| r.0.cmp(&b)) {
                Ok(at) => (size as i64 - resized[at].1 as i64).max(0) as u64,
                Err(_) => size,
            }
        };
        // One member at a time (its candidates' table stays in cache), one update per pair.
        pairs.sort_unstable_by_key(|p| p.0);
        let route = self.route;
        let mut rest = &pairs[..];
        while let Some(&((a, _), _)) = rest.first() {
            let run = rest.iter().take_while(|p| p.0 .0 == a).count();
            let (updates, tail) = rest.split_at(run);
            rest = tail;
            let subject = self.subjects.entry(a).or_default();
            let mut changed = Vec::new();
            let mut i = 0;
            while i < updates.len() {
                let b = updates[i].0 .1;
                let mut diff = 0i64;
                while i < updates.len() && updates[i].0 .1 == b {
                    diff += updates[i].1 as i64;
                    i += 1;
                }
                if diff == 0 {
                    continue;
                }
                let (before, overlap) = match subject.candidates.entry(b) {
                    Entry::Occupied(mut overlap) => {
                        let before = *overlap.get();
                        *overlap.get_mut() += diff;
                        if *overlap.get() == 0 {
                            overlap.remove();
                            (before, 0)
                        } else {
                            (before, *overlap.get())
                        }
                    }
                    Entry::Vacant(overlap) => (0, *overlap.insert(diff)),
                };
                // `a` is visited only if `b` was among its best (its old record ranks at or
                // before their last) or may now enter them; otherwise `b` stays behind them, as
                // with a size change below.
                let visit = subject.bound.as_ref().is_none_or(|last| {
                    let size = self.sizes.get(&b).copied().unwrap_or(0);
                    can_move(b, (before, old_size(&self.sizes, b)), (overlap, size), last)
                });
                // `b`'s own candidates hold this overlap when `b` is ranked here (see
                // `reverse`).
                if !route.here(&b) {
                    let back = self.reverse.entry(b).or_default();
                    if overlap == 0 {
                        back.remove(&a);
                        if back.is_empty() {
                            self.reverse.remove(&b);
                        }
                    } else {
                        back.insert(a, overlap);
                    }
                }
                if visit {
                    changed.push((b, overlap));
                }
            }
            if subject.candidates.is_empty() && subject.best.is_empty() {
                // Only updates that cancelled out: nothing to hold for `a`.
                self.subjects.remove(&a);
            } else if !changed.is_empty() {
                dirty.entry(a).or_default().extend(changed);
            }
        }
        for (member, diff) in resized {
            if self.subjects.contains_key(&member) {
                dirty.entry(member).or_default();
            }
            // The local members that have `member` as a candidate, with the overlap.
            let back = if route.here(&member) {
                self.subjects.get(&member).map(|s| &s.candidates)
            } else {
                self.reverse.get(&member)
            };
            let Some(back) = back else {
                continue;
            };
            let size = self.sizes.get(&member).copied().unwrap_or(0);
            let old_size = (size as i64 - diff as i64).max(0) as u64;
            for (a, &overlap) in back {
                if !route.here(a) {
                    continue;
                }
                // The member's record changes for `a` if it is among `a`'s best, and can enter
                // them if its cosine rose (a smaller set: a forget) past their last. Otherwise
                // it stays behind them.
                let last = self.subjects.get(a).and_then(|s| s.bound.as_ref());
                if last.is_some_and(|last| {
                    !can_move(member, (overlap, old_size), (overlap, size), last)
                }) {
                    continue;
                }
                dirty.entry(*a).or_default().push((member, overlap));
            }
        }
        let mut out = Vec::new();
        for (a, changed) in dirty {
            let Entry::Occupied(mut subject) = self.subjects.entry(a) else {
                continue;
            };
            let size = self.sizes.get(&a).copied().unwrap_or(0);
            if let Some((best, complete)) = rerank(subject.get(), changed, size, &self.sizes, k) {
                let subject = subject.get_mut();
                let old = std::mem::replace(&mut subject.best, best);
                subject.complete = complete;
                subject.bound = (!complete).then(|| subject.best.last().copied()).flatten();
                let (old, new) = (&old[..old.len().min(k)], subject.top(k));
                if old != new {
                    emit_difference(a, old, new, &mut out);
                }
            }
            if subject.get().candidates.is_empty() && subject.get().best.is_empty() {
                subject.remove();
            }
        }
        out
    }
}

/// Whether candidate `b` with `overlap` and set size `size` ranks before the entry `w` of the
/// same member (cosines compared without the member's own size, a common factor).
fn beats<M: Ord>(overlap: i64, size: u64, b: M, w: &Similar<M>) -> bool {
    let overlap = overlap.max(0) as u64;
    let lhs = u128::from(overlap).pow(2) * u128::from(w.neighbour_size);
    let rhs = u128::from(w.overlap).pow(2) * u128::from(size);
    lhs > rhs || (lhs == rhs && b < w.neighbour)
}

/// Whether candidate `b`, whose `(overlap, set size)` went from `old` to `new`, can change a
/// member's best, whose last entry is `last`: its old record ranked at or before `last`, or its
/// new one ranks before it. Otherwise it was and stays behind every entry.
fn can_move<M: Ord + Copy>(b: M, old: (i64, u64), new: (i64, u64), last: &Similar<M>) -> bool {
    beats_or_is(old.0, old.1, b, last) || (new.0 > 0 && new.1 > 0 && beats(new.0, new.1, b, last))
}

/// [`beats`], or `b` is `w`'s neighbour with these counts.
fn beats_or_is<M: Ord + Copy>(overlap: i64, size: u64, b: M, w: &Similar<M>) -> bool {
    beats(overlap, size, b, w)
        || (b == w.neighbour && overlap.max(0) as u64 == w.overlap && size == w.neighbour_size)
}

/// The neighbour record of candidate `b` with overlap `overlap`, if it is one.
fn similar<M: Hash + Eq + Copy>(
    b: M,
    overlap: i64,
    size: u64,
    sizes: &FxMap<M, u64>,
) -> Option<Similar<M>> {
    let neighbour_size = sizes.get(&b).copied().unwrap_or(0);
    (overlap > 0 && size > 0 && neighbour_size > 0).then_some(Similar {
        neighbour: b,
        overlap: overlap as u64,
        size,
        neighbour_size,
    })
}

/// The new `best` of `subject` (and whether it holds every candidate) after the changes of the
/// `changed` candidates (with their new overlaps) and of set sizes, or `None` when it stays
/// exactly as it is.
///
/// The entries of `best` that did not change keep their order (the member's own size is a
/// common factor of all its cosines) and still rank before every candidate outside `best` that
/// did not change. So the new `best` is those entries plus the changed candidates that rank
/// before the last of them (all changed candidates, if `best` held every candidate). Only when
/// fewer than `k` remain, and candidates are left outside, are all candidates ranked again.
fn rerank<M: Ord + Hash + Copy>(
    subject: &Subject<M>,
    mut changed: Vec<(M, i64)>,
    size: u64,
    sizes: &FxMap<M, u64>,
    k: usize,
) -> Option<(Vec<Similar<M>>, bool)> {
    if k == 0 || size == 0 {
        return (!subject.best.is_empty()).then(|| (Vec::new(), subject.candidates.is_empty()));
    }
    // With as many changes as candidates (a large batch), ranking every candidate is cheaper.
    if changed.len() >= subject.candidates.len() {
        return Some(rescan(subject, size, sizes, k));
    }
    // One entry per candidate (a candidate's entries are equal).
    changed.sort_unstable_by_key(|c| c.0);
    changed.dedup_by_key(|c| c.0);
    let is_changed = |b: &M| changed.binary_search_by(|c| c.0.cmp(b)).is_ok();
    let own_size_changed = subject.best.first().is_some_and(|s| s.size != size);
    // Whether every entry of `best` stays as it is (the common case of a forget, for the members
    // that had the forgotten user among their candidates but not among their best).
    let untouched = !own_size_changed && !subject.best.iter().any(|s| is_changed(&s.neighbour));
    let mut best: Vec<Similar<M>> = Vec::new();
    if !untouched {
        best.reserve(depth(k) + 1);
        best.extend(
            subject
                .best
                .iter()
                .filter(|s| !is_changed(&s.neighbour))
                .map(|s| Similar { size, ..*s }),
        );
    }
    let kept = if untouched {
        &subject.best[..]
    } else {
        &best[..]
    };
    if !subject.complete && kept.is_empty() {
        return Some(rescan(subject, size, sizes, k));
    }
    let bound = (!subject.complete).then(|| kept[kept.len() - 1]);
    let entering: Vec<Similar<M>> = changed
        .iter()
        .filter_map(|&(b, overlap)| similar(b, overlap, size, sizes))
        .filter(|c| bound.is_none_or(|w| closer(c, &w) == std::cmp::Ordering::Less))
        .collect();
    if untouched {
        if entering.is_empty() {
            return None;
        }
        best = subject.best.clone();
    }
    if !subject.complete && best.len() + entering.len() < k {
        return Some(rescan(subject, size, sizes, k));
    }
    let complete = subject.complete && best.len() + entering.len() <= depth(k);
    Some((merge_first_n_by(best, entering, depth(k), closer), complete))
}

/// Every candidate of `subject` ranked again: the best [`depth`]`(k)`, and whether that is all
/// of them.
fn rescan<M: Ord + Hash + Copy>(
    subject: &Subject<M>,
    size: u64,
    sizes: &FxMap<M, u64>,
    k: usize,
) -> (Vec<Similar<M>>, bool) {
    let pool: Vec<Similar<M>> = subject
        .candidates
        .iter()
        .filter_map(|(&b, &overlap)| similar(b, overlap, size, sizes))
        .collect();
    let complete = pool.len() <= depth(k);
    (first_n_by(pool, depth(k), closer), complete)
}

/// Emits the records of `old` not in `new` with `-1` and those of `new` not in `old` with `+1`,
/// both ranked by [`closer`].
///
/// One walk through both, as through two sorted lists: [`closer`] orders records by cosine,
/// then neighbour, so a record that is in both is at the same place in each, and two records
/// it finds equal name the same neighbour (one per list), equal or not.
fn emit_difference<M: Ord + Copy>(
    a: M,
    old: &[Similar<M>],
    new: &[Similar<M>],
    out: &mut Vec<((M, Similar<M>), Diff)>,
) {
    let (mut i, mut j) = (0, 0);
    while i < old.len() && j < new.len() {
        match closer(&old[i], &new[j]) {
            Ordering::Less => {
                out.push(((a, old[i]), -1));
                i += 1;
            }
            Ordering::Greater => {
                out.push(((a, new[j]), 1));
                j += 1;
            }
            Ordering::Equal => {
                if old[i] != new[j] {
                    out.push(((a, old[i]), -1));
                    out.push(((a, new[j]), 1));
                }
                i += 1;
                j += 1;
            }
        }
    }
    out.extend(old[i..].iter().map(|s| ((a, *s), -1)));
    out.extend(new[j..].iter().map(|s| ((a, *s), 1)));
}
