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
//! whose inputs changed are ranked again with [`rank_user`] over exactly the inputs the
//! differential formulation gave it, and the difference between the old and new ranking is
//! emitted at that time.
//!
//! Privacy: every map entry leaves the moment it reaches zero (an item of a user, a follower's
//! weight, a sum, an input), and a user's entry leaves once nothing is held for them, so a
//! forgotten user's retracted items and neighbour records leave no state behind;
//! [`RankState::records_naming`] counts what is held of given users for the runtime's audit.

use super::cosine::{in_time_order, FxHasher};
use super::recommend::{
    rank_user, top_n, weighted_content, RankInput, RecommendParams, Recommendation,
};
use super::{sorted_changes, Diff};
use crate::event::{Sym, UserId};
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
#[derive(Default)]
struct UserRank {
    /// Own items, dismissals and popular items, with multiplicities.
    inputs: FxMap<RankInput, i64>,
    /// `via(u, i)`, non-zero sums only.
    via: FxMap<Sym, i64>,
    /// The ranking last emitted.
    top: Vec<Recommendation>,
    /// The content term of each candidate ranked so far, and the tag profile and its squared
    /// norm it was computed from: both depend only on the user's own items, so they are kept
    /// until those change (a neighbour change, e.g. a forget, leaves them valid).
    content: FxMap<Sym, i64>,
    profile: Option<(FxMap<Sym, i64>, i64)>,
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
        // Neighbour weights change with the neighbours' item sets as they were (ΔW · I) ...
        for ((user, input), diff) in inputs {
            if diff == 0 {
                continue;
            }
            let rank = self.users.entry(user).or_default();
            match input {
                ToRank::Input(value) => {
                    if let RankInput::Own(_) = value {
                        rank.content.clear();
                        rank.profile = None;
                    }
                    add(&mut rank.inputs, value, diff as i64);
                }
                ToRank::Neighbour(v, w) => {
                    let delta = w * diff as i64;
                    if let Some(its) = self.items_of.get(&v) {
                        for (&item, &copies) in its {
                            add(&mut rank.via, item, delta * copies);
                        }
                    }
                    let followers = self.followers.entry(v).or_default();
                    add(followers, user, delta);
                    if followers.is_empty() {
                        self.followers.remove(&v);
                    }
                }
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
            let mut new = rank_cached(rank.get_mut(), params, &mut input);
            new.sort_unstable();
            let old = std::mem::replace(&mut rank.get_mut().top, new);
            sorted_changes(&old, &rank.get().top, |r, diff| {
                changes.push(((user, r), diff))
            });
            let r = rank.get();
            if r.inputs.is_empty() && r.via.is_empty() && r.top.is_empty() {
                rank.remove();
            }
        }
        changes
    }
}

/// [`rank_user`] over the user's inputs and `Via(i, via(u, i))` for every sum, with the content
/// term of each candidate cached (see [`UserRank::content`]). Popularity rankings (cold users)
/// go through `rank_user` itself.
fn rank_cached(
    rank: &mut UserRank,
    params: &RecommendParams,
    input: &mut Vec<(RankInput, Diff)>,
) -> Vec<Recommendation> {
    let UserRank {
        inputs,
        via,
        content,
        profile,
        ..
    } = rank;
    let cold = inputs
        .iter()
        .any(|(v, r)| matches!(v, RankInput::Popular(..)) && *r > 0);
    if cold {
        input.clear();
        input.extend(inputs.iter().map(|(v, r)| (*v, *r as Diff)));
        input.extend(
            via.iter()
                .map(|(item, sum)| (RankInput::Via(*item, *sum), 1)),
        );
        return rank_user(input, params);
    }
    if params.n == 0 || via.is_empty() {
        return Vec::new();
    }
    let present = |value: RankInput| inputs.get(&value).is_some_and(|c| *c > 0);
    let catalog = params
        .catalog
        .as_ref()
        .filter(|_| params.content_weight != 0);
    if let (Some(catalog), None) = (catalog, profile.as_ref()) {
        let mut tags: FxMap<Sym, i64> = FxMap::default();
        for (value, copies) in inputs.iter() {
            if let (RankInput::Own(item), true) = (value, *copies > 0) {
                for tag in catalog.tags(*item) {
                    *tags.entry(*tag).or_insert(0) += 1;
                }
            }
        }
        let norm_sq = tags.values().map(|c| c * c).sum::<i64>();
        *profile = Some((tags, norm_sq));
    }
    let mut ranked: Vec<(i64, Sym)> = Vec::with_capacity(via.len());
    for (&item, &cf) in via.iter() {
        if present(RankInput::Own(item)) || present(RankInput::Dismissed(item)) {
            continue;
        }
        let extra = match (catalog, profile.as_ref()) {
            (Some(catalog), Some((tags, norm_sq))) => *content.entry(item).or_insert_with(|| {
                weighted_content(tags, *norm_sq, catalog.tags(item), params.content_weight)
            }),
            _ => 0,
        };
        ranked.push((cf + extra, item));
    }
    top_n(ranked, params.n)
}
