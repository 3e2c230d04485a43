//! The per-user ranking of recommendations, with the neighbours' items summed in place.
//!
//! A user's personal candidates are the items of their neighbours, each weighted by the
//! neighbour's cosine: `via(u, i) = Σ_{v ∈ N(u), i ∈ I_v} w(u, v)`. As a differential join of
//! the neighbour records with every user's items, each changed neighbour record of `u` restates
//! `|I_v|` join outputs, which then travel, are consolidated and summed per `(u, i)`: on
//! MovieLens 100k with `k = 80`, ~100k updates per forget. [`rank_users`] keeps the sums
//! instead: every worker holds every user's item set (item changes are broadcast), and each
//! worker, for the users it ranks, the neighbour weights and `via` sums. A changed neighbour
//! weight adds `Δw` to the user's sums over the neighbour's items; a changed item of `v` adds
//! each follower's weight of `v` to that follower's sum. The sums are exact integers, kept as
//! `Σ_v W_v · I_v` is kept when either factor changes, in any order (the bilinear update
//! `ΔW · I + W' · ΔI`).
//!
//! At each logical time, once both inputs' frontiers have passed it (in time order), the users
//! whose inputs changed are ranked again, with the result [`rank_user`] gives over exactly the
//! inputs the differential formulation gave it, and the difference between the old and new
//! ranking is emitted at that time. A user keeps their best `3n` candidates ranked (a prefix
//! of the ranking of all of them), so a ranking again looks only at the candidates whose sum
//! changed: a forgotten neighbour lowers the sums of its items, which keep their place or fall
//! behind, and only when fewer than `n` ranked ones remain are all candidates scored again.
//!
//! Privacy: every map entry leaves the moment it reaches zero (an item of a user, a follower's
//! weight, a sum, an input), and a user's entry leaves once nothing is held for them, so a
//! forgotten user's retracted items and neighbour records leave no state behind;
//! [`RankState::records_naming`] counts what is held of given users for the runtime's audit.

use super::cosine::{in_time_order, FxHasher};
use super::recommend::{
    ahead, numbered, rank_user, weighted_content, RankInput, RecommendParams, Recommendation,
};
use super::{first_n_by, merge_first_n_by, sorted_changes, Diff};
use crate::event::{Sym, UserId};
use differential_dataflow::consolidation::consolidate;
use differential_dataflow::{AsCollection, Hashable, VecCollection};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash};
use std::rc::Rc;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::vec::Broadcast;

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// What reaches a user's ranking, other than the neighbours' items.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ToRank {
    /// One of the user's own items, a dismissal or a popular item (never `Via`).
    Input(RankInput),
    /// A neighbour with the fixed-point cosine its items are weighted by.
    Neighbour(UserId, i64),
}

/// One user's side of the ranking.
struct UserRank {
    /// Own items, dismissals and popular items, with multiplicities.
    inputs: FxMap<RankInput, i64>,
    /// `via(u, i)`, non-zero sums only.
    via: FxMap<Sym, i64>,
    /// The ranking last emitted.
    top: Vec<Recommendation>,
    /// The best candidates `(score, item)` in the order of recommendations, at most
    /// [`depth`]`(n)`: a prefix of the ranking of all candidates (every candidate not here ranks
    /// after every entry here), of which `top` is the first `n`. The others let an item fall
    /// behind without a rescan of every candidate.
    best: Vec<(i64, Sym)>,
    /// Whether `best` holds every candidate.
    complete: bool,
    /// Whether every candidate is to be scored again at the next ranking (the user's own items
    /// changed, which changes every content term, or they were ranked by popularity).
    stale: bool,
    /// Candidates whose score or eligibility changed since the last ranking, each with the
    /// direction of a change (negative: it fell or left; positive: it rose or entered).
    changed: Vec<(Sym, i64)>,
    /// The content term of each candidate ranked so far, and the tag profile and its squared
    /// norm it was computed from: both depend only on the user's own items, so they are kept
    /// until those change (a neighbour change, e.g. a forget, leaves them valid).
    content: FxMap<Sym, i64>,
    profile: Option<(FxMap<Sym, i64>, i64)>,
}

impl Default for UserRank {
    fn default() -> Self {
        UserRank {
            inputs: FxMap::default(),
            via: FxMap::default(),
            top: Vec::new(),
            best: Vec::new(),
            complete: false,
            stale: true,
            changed: Vec::new(),
            content: FxMap::default(),
            profile: None,
        }
    }
}

impl UserRank {
    /// Notes that `item`'s score or eligibility changed in `direction` (its sign). Once there
    /// are as many changes as candidates, every candidate will be scored again instead (which
    /// costs less then), and the list is dropped: a large batch would otherwise hold one for
    /// every user it touches.
    fn touch(&mut self, item: Sym, direction: i64) {
        if self.stale {
            return;
        }
        if self.changed.len() >= self.via.len() {
            self.stale = true;
            self.changed = Vec::new();
        } else {
            self.changed.push((item, direction));
        }
    }
}

/// How many ranked candidates a user keeps for `n` recommendations: three times `n`, so that a
/// forgotten neighbour's items can fall behind without a rescan of every candidate.
fn depth(n: usize) -> usize {
    3 * n
}

/// The ranking state of one worker.
#[derive(Default)]
struct Ranks {
    /// Every user's items (broadcast to every worker), with multiplicities.
    items_of: FxMap<UserId, FxMap<Sym, i64>>,
    /// For each neighbour `v`, the users ranked here with `v` as a neighbour, and the weight.
    followers: FxMap<UserId, FxMap<UserId, i64>>,
    /// The users ranked here.
    users: FxMap<UserId, UserRank>,
}

/// A handle on the state of one [`rank_users`] instance on this worker, for the forget audit.
#[derive(Clone)]
pub struct RankState {
    ranks: Rc<RefCell<Ranks>>,
}

impl RankState {
    /// How many entries name a user for which `user` holds: their items, follower entries
    /// (as neighbour or as follower), and everything held for their own ranking.
    pub fn records_naming(&self, user: impl Fn(&UserId) -> bool) -> usize {
        let ranks = self.ranks.borrow();
        let mut found = 0;
        for (u, items) in &ranks.items_of {
            if user(u) {
                found += items.len();
            }
        }
        for (v, followers) in &ranks.followers {
            found += if user(v) {
                followers.len()
            } else {
                followers.keys().filter(|x| user(x)).count()
            };
        }
        for (u, rank) in &ranks.users {
            if user(u) {
                found += 1 + rank.inputs.len() + rank.via.len() + rank.top.len();
                found += rank.best.len() + rank.changed.len();
                found += rank.content.len() + rank.profile.as_ref().map_or(0, |p| p.0.len());
            }
        }
        found
    }

    /// Entries held in all.
    pub fn len(&self) -> usize {
        self.records_naming(|_| true)
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The output of [`rank_users`] and a handle on its state.
pub type Ranked<'s> = (
    VecCollection<'s, u64, (UserId, Recommendation), Diff>,
    RankState,
);

/// Every user's ranking by [`rank_user`] over their inputs (`to_rank`, routed by user) plus
/// `Via(i, via(u, i))` for the items of their neighbours, whose item sets come from `items`
/// (every user's `(user, item)`). See the module docs.
pub fn rank_users<'s>(
    to_rank: VecCollection<'s, u64, (UserId, ToRank), Diff>,
    items: VecCollection<'s, u64, (UserId, Sym), Diff>,
    params: &RecommendParams,
) -> Ranked<'s> {
    let state = RankState {
        ranks: Rc::new(RefCell::new(Ranks::default())),
    };
    let ranks = state.ranks.clone();
    let params = params.clone();
    let output = in_time_order(
        to_rank.inner,
        items.inner.broadcast(),
        Exchange::new(|((user, _), _, _): &((UserId, ToRank), u64, Diff)| user.hashed()),
        Pipeline,
        "RankUsers",
        move |inputs, items| ranks.borrow_mut().apply(inputs, items, &params),
    )
    .as_collection();
    (output, state)
}

/// Adds `diff` to `map[key]`, dropping the entry at zero.
fn add<K: Eq + Hash>(map: &mut FxMap<K, i64>, key: K, diff: i64) {
    match map.entry(key) {
        Entry::Occupied(mut sum) => {
            *sum.get_mut() += diff;
            if *sum.get() == 0 {
                sum.remove();
            }
        }
        Entry::Vacant(sum) => {
            if diff != 0 {
                sum.insert(diff);
            }
        }
    }
}

impl Ranks {
    /// Applies one time's updates and returns the ranking changes of the users they touched.
    fn apply(
        &mut self,
        inputs: Vec<((UserId, ToRank), Diff)>,
        items: Vec<((UserId, Sym), Diff)>,
        params: &RecommendParams,
    ) -> Vec<((UserId, Recommendation), Diff)> {
        let mut dirty: Vec<UserId> = Vec::new();
        let mut weights: Vec<((UserId, UserId), i64)> = Vec::new();
        for ((user, input), diff) in inputs {
            if diff == 0 {
                continue;
            }
            let value = match input {
                ToRank::Input(value) => value,
                ToRank::Neighbour(v, w) => {
                    weights.push(((user, v), w * diff as i64));
                    continue;
                }
            };
            let rank = self.users.entry(user).or_default();
            match value {
                RankInput::Own(_) => {
                    rank.content.clear();
                    rank.profile = None;
                    rank.stale = true;
                    rank.changed = Vec::new();
                }
                // A dismissal takes the item out; its retraction lets it back in.
                RankInput::Dismissed(item) => rank.touch(item, -(diff as i64)),
                RankInput::Via(..) | RankInput::Popular(..) => {}
            }
            add(&mut rank.inputs, value, diff as i64);
            dirty.push(user);
        }
        // Neighbour weights change with the neighbours' item sets as they were (ΔW · I) ...
        // A neighbour whose score changed arrives as the old weight's retraction and the new
        // one's insertion: their sum moves the user's sums in one pass over the neighbour's
        // items (none at all when the weight stays the same), one user at a time.
        consolidate(&mut weights);
        for ((user, v), delta) in weights {
            let rank = self.users.entry(user).or_default();
            if let Some(its) = self.items_of.get(&v) {
                for (&item, &copies) in its {
                    add(&mut rank.via, item, delta * copies);
                    rank.touch(item, delta * copies);
                }
            }
            let followers = self.followers.entry(v).or_default();
            add(followers, user, delta);
            if followers.is_empty() {
                self.followers.remove(&v);
            }
            dirty.push(user);
        }
        // ... then item sets change under the new weights (W' · ΔI).
        for ((v, item), diff) in items {
            if diff == 0 {
                continue;
            }
            let its = self.items_of.entry(v).or_default();
            add(its, item, diff as i64);
            if its.is_empty() {
                self.items_of.remove(&v);
            }
            if let Some(followers) = self.followers.get(&v) {
                for (&user, &w) in followers {
                    let rank = self.users.entry(user).or_default();
                    add(&mut rank.via, item, w * diff as i64);
                    rank.touch(item, w * diff as i64);
                    dirty.push(user);
                }
            }
        }
        dirty.sort_unstable();
        dirty.dedup();
        let mut changes = Vec::new();
        let mut input: Vec<(RankInput, Diff)> = Vec::new();
        for user in dirty {
            let Entry::Occupied(mut rank) = self.users.entry(user) else {
                continue;
            };
            let new = rank_cached(rank.get_mut(), params, &mut input);
            if new != rank.get().top {
                let old = std::mem::replace(&mut rank.get_mut().top, new);
                sorted_changes(&old, &rank.get().top, |r, diff| {
                    changes.push(((user, r), diff))
                });
            }
            let r = rank.get();
            if r.inputs.is_empty() && r.via.is_empty() && r.top.is_empty() && r.best.is_empty() {
                rank.remove();
            }
        }
        changes
    }
}

/// [`rank_user`] over the user's inputs and `Via(i, via(u, i))` for every sum (sorted by rank),
/// computed from the candidates that changed since the last ranking where it can be (see
/// [`UserRank::best`]), with the content term of each candidate cached (see
/// [`UserRank::content`]). Popularity rankings (cold users) go through `rank_user` itself.
fn rank_cached(
    rank: &mut UserRank,
    params: &RecommendParams,
    input: &mut Vec<(RankInput, Diff)>,
) -> Vec<Recommendation> {
    let cold = rank
        .inputs
        .iter()
        .any(|(v, r)| matches!(v, RankInput::Popular(..)) && *r > 0);
    if cold {
        input.clear();
        input.extend(rank.inputs.iter().map(|(v, r)| (*v, *r as Diff)));
        input.extend(
            rank.via
                .iter()
                .map(|(item, sum)| (RankInput::Via(*item, *sum), 1)),
        );
        rank.best.clear();
        rank.stale = true;
        rank.changed = Vec::new();
        return rank_user(input, params);
    }
    let n = params.n;
    if n == 0 || rank.via.is_empty() {
        rank.best.clear();
        rank.complete = true;
        rank.changed = Vec::new();
        rank.stale = false;
        return Vec::new();
    }
    let catalog = params
        .catalog
        .as_ref()
        .filter(|_| params.content_weight != 0);
    if let (Some(catalog), None) = (catalog, rank.profile.as_ref()) {
        let mut tags: FxMap<Sym, i64> = FxMap::default();
        for (value, copies) in rank.inputs.iter() {
            if let (RankInput::Own(item), true) = (value, *copies > 0) {
                for tag in catalog.tags(*item) {
                    *tags.entry(*tag).or_insert(0) += 1;
                }
            }
        }
        let norm_sq = tags.values().map(|c| c * c).sum::<i64>();
        rank.profile = Some((tags, norm_sq));
    }
    let UserRank {
        inputs,
        via,
        best,
        complete,
        stale,
        changed,
        content,
        profile,
        ..
    } = rank;
    let present = |value: RankInput| inputs.get(&value).is_some_and(|c| *c > 0);
    // The score of a candidate, `None` if it is not one (own, dismissed, or no neighbour has it).
    let mut score = |item: Sym| -> Option<i64> {
        let cf = *via.get(&item)?;
        if present(RankInput::Own(item)) || present(RankInput::Dismissed(item)) {
            return None;
        }
        let extra = match (catalog, profile.as_ref()) {
            (Some(catalog), Some((tags, norm_sq))) => *content.entry(item).or_insert_with(|| {
                weighted_content(tags, *norm_sq, catalog.tags(item), params.content_weight)
            }),
            _ => 0,
        };
        Some(cf + extra)
    };
    let rescan = |score: &mut dyn FnMut(Sym) -> Option<i64>| {
        let all: Vec<(i64, Sym)> = via
            .keys()
            .filter_map(|&item| score(item).map(|s| (s, item)))
            .collect();
        let complete = all.len() <= depth(n);
        (first_n_by(all, depth(n), ahead), complete)
    };
    // Scoring each change costs about what scoring a candidate does: with as many changes as
    // candidates (a large batch, see `touch`), every candidate is scored again instead.
    let updated = if *stale || changed.len() >= via.len() {
        None
    } else {
        // One entry per item, rising if any of its changes rose.
        changed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        changed.dedup_by_key(|c| c.0);
        let is_changed = |item: &Sym| changed.binary_search_by(|c| c.0.cmp(item)).is_ok();
        let mut was_best: Vec<Sym> = best.iter().map(|b| b.1).collect();
        was_best.sort_unstable();
        let kept: Vec<(i64, Sym)> = best.iter().copied().filter(|b| !is_changed(&b.1)).collect();
        let bound = (!*complete).then(|| kept.last().copied()).flatten();
        let mut entering = Vec::new();
        if *complete || !kept.is_empty() {
            for &(item, direction) in changed.iter() {
                // An item outside `best` whose score only fell stays behind it.
                if direction <= 0 && was_best.binary_search(&item).is_err() {
                    continue;
                }
                if let Some(s) = score(item) {
                    if bound.is_none_or(|b| ahead(&(s, item), &b) == std::cmp::Ordering::Less) {
                        entering.push((s, item));
                    }
                }
            }
        }
        let len = kept.len() + entering.len();
        (*complete || len >= n).then(|| {
            let full = *complete && len <= depth(n);
            (merge_first_n_by(kept, entering, depth(n), ahead), full)
        })
    };
    let (new_best, new_complete) = updated.unwrap_or_else(|| rescan(&mut score));
    *best = new_best;
    *complete = new_complete;
    *stale = false;
    // Not `clear`: a large batch would leave its capacity behind for every user it touched.
    *changed = Vec::new();
    numbered(&best[..best.len().min(n)])
}
