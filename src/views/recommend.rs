//! Recommendations: user-based collaborative filtering over the [`similarity`] neighbours, with
//! dismissals, an optional content term from an item catalog, and a popularity fallback for
//! users without neighbours or opted out of personalization (DESIGN "Views").
//!
//! For a user `u` with neighbours `v` (their top `k`), `score(u, i) = Σ cosine(u, v)` over the
//! neighbours with `i ∈ I_v`, for items `i` not in `I_u` and not dismissed by `u`. Cosines are
//! summed as fixed-point integers ([`cosine_fixed`]), so a score never depends on worker count
//! or order. With a catalog and `content_weight = w`, each such candidate also gets
//! `w × cosine(profile_u, tags_i)`, where `profile_u[t]` is the number of items of `I_u` tagged
//! `t` and `tags_i` is the item's tag set (a 0/1 vector). The top `n` by score (descending),
//! ties by the item's symbol (ascending), are ranked `1..=n`.
//!
//! A user with no neighbour (cold start) or opted out gets the `n` most popular items they have
//! neither interacted with nor dismissed: popularity is the number of distinct users (opted out
//! or not) with an interaction on the item within the last `popular_within` (all time when
//! unset); ties by the item's symbol. Their score is that number of users.
//!
//! [`similarity`]: super::similarity::similarity
//! [`cosine_fixed`]: super::similarity::cosine_fixed

use super::cosine::FxHasher;
use super::popular::popular_ranks;
use super::rank::{rank_users, Ranked, ToRank};
use super::similarity::{
    interactions, similarity, Interactions, Similar, SimilarityParams, SCORE_SCALE,
};
use super::window::{sliding, Expiry};
use super::{first_n_by, Diff};
use crate::event::{Event, Sym, UserId};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use differential_dataflow::VecCollection;

/// Why an item catalog could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The file could not be opened or read.
    #[error("cannot read catalog {path}: {message}")]
    Read {
        /// The catalog file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A row or the header is not `item,tags`.
    #[error("invalid catalog {path}: line {line}: {message}")]
    Invalid {
        /// The catalog file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        message: String,
    },
}

/// Item tags, for the content term: item symbol → sorted, distinct tag symbols.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Hashed, not ordered: `tags` is looked up for every candidate of every ranking.
    tags: FxMap<Sym, Vec<Sym>>,
}

impl Catalog {
    /// A catalog from `(item, tags)` names.
    ///
    /// ```
    /// use behave::event::Sym;
    /// use behave::views::recommend::Catalog;
    /// let c = Catalog::from_names([("film", vec!["drama", "war", "drama"])]);
    /// assert_eq!(c.tags(Sym::of("film")).len(), 2);
    /// assert!(c.tags(Sym::of("other")).is_empty());
    /// ```
    pub fn from_names<'a>(items: impl IntoIterator<Item = (&'a str, Vec<&'a str>)>) -> Catalog {
        let mut catalog = Catalog::default();
        for (item, tags) in items {
            catalog.insert(Sym::of(item), tags.into_iter().map(Sym::of));
        }
        catalog
    }

    fn insert(&mut self, item: Sym, tags: impl IntoIterator<Item = Sym>) {
        let entry = self.tags.entry(item).or_default();
        entry.extend(tags);
        entry.sort();
        entry.dedup();
    }

    /// The tags of `item` (empty when unknown).
    pub fn tags(&self, item: Sym) -> &[Sym] {
        self.tags.get(&item).map_or(&[], Vec::as_slice)
    }

    /// Number of items with tags.
    pub fn len(&self) -> usize {
        self.tags.len()
    }

    /// Whether no item has tags.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// Reads a CSV file with header `item,tags`, tags separated by `|` (empty tags allowed).
    /// Also returns each item's name, to print item symbols.
    pub fn load(path: &Path) -> Result<(Catalog, Vec<(Sym, String)>), CatalogError> {
        let read = |message: String| CatalogError::Read {
            path: path.to_owned(),
            message,
        };
        let invalid = |line: u64, message: String| CatalogError::Invalid {
            path: path.to_owned(),
            line,
            message,
        };
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_path(path)
            .map_err(|e| read(e.to_string()))?;
        let header = reader.headers().map_err(|e| invalid(1, e.to_string()))?;
        if header.len() != 2 || &header[0] != "item" || &header[1] != "tags" {
            return Err(invalid(
                1,
                format!(
                    "expected the header \"item,tags\", found \"{}\"",
                    header.iter().collect::<Vec<_>>().join(",")
                ),
            ));
        }
        let mut catalog = Catalog::default();
        let mut names = Vec::new();
        for record in reader.records() {
            let record = record.map_err(|e| {
                let line = e.position().map_or(0, |p| p.line());
                invalid(line, e.to_string())
            })?;
            let line = record.position().map_or(0, |p| p.line());
            let item = record.get(0).unwrap_or("").trim();
            if item.is_empty() {
                return Err(invalid(line, "empty item".into()));
            }
            let tags = record
                .get(1)
                .unwrap_or("")
                .split('|')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(Sym::of);
            catalog.insert(Sym::of(item), tags);
            names.push((Sym::of(item), item.to_string()));
        }
        Ok((catalog, names))
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Parameters of the recommendations view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecommendParams {
    /// Items per user.
    pub n: usize,
    /// The event type with which a user dismisses an item (never recommended to them again).
    pub dismiss: Option<Sym>,
    /// Popularity window in seconds for the fallback (all time when `None`).
    pub popular_within: Option<i64>,
    /// Item tags for the content term.
    pub catalog: Option<Arc<Catalog>>,
    /// Weight of the content term in millionths (`1_000_000` = 1.0).
    pub content_weight: i64,
}

/// One recommendation of a user.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Recommendation {
    /// Rank, from 1.
    pub rank: u32,
    /// The item.
    pub item: Sym,
    /// Score in fixed point (`SCORE_SCALE` = 1.0); for popularity fallbacks the number of users
    /// times `SCORE_SCALE`.
    pub score: i64,
}

/// What the per-user ranking sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RankInput {
    /// An item of the user's own `I_u`.
    Own(Sym),
    /// An item the user dismissed.
    Dismissed(Sym),
    /// An item of the user's neighbours, with a fixed-point sum of their cosines (several
    /// `Via` values of one item add up).
    Via(Sym, i64),
    /// The popular item of rank `.0` (from 0), with its number of users (cold users only).
    Popular(u32, Sym, u64),
}

/// The content cosine between a tag profile and an item's tags, in fixed point.
///
/// ```
/// use behave::views::recommend::content_fixed;
/// use behave::event::Sym;
/// use std::collections::HashMap;
/// let (a, b) = (Sym::of("a"), Sym::of("b"));
/// let profile: HashMap<Sym, i64> = [(a, 1)].into();
/// assert_eq!(content_fixed(&profile, 1, &[a]), 1_000_000_000_000);
/// assert_eq!(content_fixed(&profile, 1, &[a, b]), 707_106_781_187);
/// ```
pub fn content_fixed<S: BuildHasher>(
    profile: &HashMap<Sym, i64, S>,
    norm_sq: i64,
    tags: &[Sym],
) -> i64 {
    let dot: i64 = tags.iter().filter_map(|t| profile.get(t)).sum();
    if dot == 0 || norm_sq == 0 {
        return 0;
    }
    let cosine = dot as f64 / ((norm_sq as f64) * (tags.len() as f64)).sqrt();
    (cosine * SCORE_SCALE as f64).round() as i64
}

/// The hybrid term of one candidate: `content_weight` (in millionths) times
/// [`content_fixed`], in the fixed point of scores.
pub(crate) fn weighted_content<S: BuildHasher>(
    profile: &HashMap<Sym, i64, S>,
    norm_sq: i64,
    tags: &[Sym],
    content_weight: i64,
) -> i64 {
    let cosine = content_fixed(profile, norm_sq, tags);
    (i128::from(cosine) * i128::from(content_weight) / 1_000_000) as i64
}

/// The order of recommendations: score descending, then item ascending.
pub(crate) fn ahead(a: &(i64, Sym), b: &(i64, Sym)) -> std::cmp::Ordering {
    b.0.cmp(&a.0).then(a.1.cmp(&b.1))
}

/// `ranked` (score, item), in the order [`ahead`], as recommendations ranked from 1.
pub(crate) fn numbered(ranked: &[(i64, Sym)]) -> Vec<Recommendation> {
    ranked
        .iter()
        .enumerate()
        .map(|(i, &(score, item))| Recommendation {
            rank: i as u32 + 1,
            item,
            score,
        })
        .collect()
}

/// The first `n` of `ranked` (score, item) by score descending, ties by item ascending, ranked
/// from 1.
pub(crate) fn top_n(ranked: Vec<(i64, Sym)>, n: usize) -> Vec<Recommendation> {
    numbered(&first_n_by(ranked, n, ahead))
}

/// Ranks one user's recommendations from everything the dataflow gathered for them (also
/// usable on its own): popularity when `Popular` inputs are present, else the neighbours' items.
///
/// It runs for every user whose inputs change (hundreds per forget), over ~1,000 candidate
/// items each, so it uses hash maps and sorted vectors and selects the best `n` before sorting
/// them; the ranking is a total order (score, then item), so the result is the same as sorting
/// every candidate.
pub fn rank_user(input: &[(RankInput, Diff)], params: &RecommendParams) -> Vec<Recommendation> {
    let mut own: Vec<Sym> = Vec::new();
    let mut dismissed: Vec<Sym> = Vec::new();
    let mut via: FxMap<Sym, i64> = FxMap::default();
    let mut popular = Vec::new();
    for (value, copies) in input {
        if *copies <= 0 {
            continue;
        }
        match *value {
            RankInput::Own(item) => own.push(item),
            RankInput::Dismissed(item) => dismissed.push(item),
            RankInput::Via(item, w) => *via.entry(item).or_insert(0) += w * *copies as i64,
            RankInput::Popular(rank, item, users) => popular.push((rank, item, users)),
        }
    }
    own.sort_unstable();
    own.dedup();
    dismissed.sort_unstable();
    dismissed.dedup();
    let fresh =
        |item: &Sym| own.binary_search(item).is_err() && dismissed.binary_search(item).is_err();
    let ranked: Vec<(i64, Sym)> = if !popular.is_empty() {
        popular.sort();
        popular
            .into_iter()
            .filter(|(_, item, _)| fresh(item))
            .take(params.n)
            .map(|(_, item, users)| ((users as i64).saturating_mul(SCORE_SCALE), item))
            .collect()
    } else {
        let content = params
            .catalog
            .as_ref()
            .filter(|_| params.content_weight != 0)
            .map(|catalog| {
                let mut profile: FxMap<Sym, i64> = FxMap::default();
                for item in &own {
                    for tag in catalog.tags(*item) {
                        *profile.entry(*tag).or_insert(0) += 1;
                    }
                }
                let norm_sq = profile.values().map(|c| c * c).sum::<i64>();
                (catalog, profile, norm_sq)
            });
        via.into_iter()
            .filter(|(item, _)| fresh(item))
            .map(|(item, cf)| {
                let extra = content.as_ref().map_or(0, |(catalog, profile, norm_sq)| {
                    weighted_content(profile, *norm_sq, catalog.tags(item), params.content_weight)
                });
                (cf + extra, item)
            })
            .collect()
    };
    top_n(ranked, params.n)
}

/// Item popularity `(item, users)`: distinct users with an interaction on the item within the
/// last `within` seconds (all time when `None`; the window expires as `expiry_at` says),
/// opted-out users included.
pub fn popularity<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    rule: &Interactions,
    within: Option<i64>,
    expiry_at: &Expiry<'s>,
) -> VecCollection<'s, u64, (Sym, u64), Diff> {
    let recent = match within {
        Some(d) => sliding(events, d, expiry_at),
        None => events,
    };
    interactions(recent, rule)
        .map(|(_user, item)| item)
        .count()
        .map(|(item, users)| (item, users as u64))
}

/// Recommendations `(user, Recommendation)` for every user with an event, using the neighbours
/// of [`similarity`] (see the module docs).
pub fn recommendations<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    similar: &SimilarityParams,
    params: &RecommendParams,
) -> VecCollection<'s, u64, (UserId, Recommendation), Diff> {
    let neighbours = similarity(events.clone(), similar);
    recommendations_from(events, neighbours, similar, params, &Expiry::Exact)
}

/// [`recommendations`] over a similarity collection computed elsewhere (to share it with the
/// similarity view), its popularity window expiring as `expiry_at` says. `neighbours` must be
/// `similarity(events, similar)`.
pub fn recommendations_from<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    neighbours: VecCollection<'s, u64, (UserId, Similar<UserId>), Diff>,
    similar: &SimilarityParams,
    params: &RecommendParams,
    expiry_at: &Expiry<'s>,
) -> VecCollection<'s, u64, (UserId, Recommendation), Diff> {
    recommendations_with_state(events, neighbours, similar, params, expiry_at).0
}

/// [`recommendations_from`], with a handle on the per-user ranking state (keyed by user) for
/// the forget audit.
pub fn recommendations_with_state<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    neighbours: VecCollection<'s, u64, (UserId, Similar<UserId>), Diff>,
    similar: &SimilarityParams,
    params: &RecommendParams,
    expiry_at: &Expiry<'s>,
) -> Ranked<'s> {
    let own = interactions(events.clone(), &similar.interactions).arrange_by_key_named("OwnItems");
    let dismissed = match params.dismiss {
        Some(kind) => events
            .clone()
            .flat_map(move |e| {
                (e.kind == kind)
                    .then_some(e.item.map(|i| (e.user, i)))
                    .flatten()
            })
            .distinct(),
        None => events.clone().flat_map(|_| None::<(UserId, Sym)>),
    };
    // Personal candidates: the items of each neighbour, weighted by the neighbour's cosine,
    // summed per (user, item) in place by the ranking operator (see `rank`).
    let weights = neighbours
        .clone()
        .map(|(user, s)| (user, ToRank::Neighbour(s.neighbour, s.fixed())));
    // Cold users: any event, and no neighbour (opted-out users have none).
    let users = events.clone().map(|e| (e.user, ())).distinct();
    let with_neighbours = neighbours.map(|(user, _)| user).distinct();
    let cold = users.antijoin(with_neighbours).map(|(user, ())| user);
    // A cold user needs at most the n + |I_u| + |D_u| most popular items (the count below is
    // one more: the user itself is counted once too).
    let n = params.n as u64;
    let budgets = cold
        .clone()
        .concat(own.clone().as_collection(|u, _| *u))
        .concat(dismissed.clone().map(|(u, _)| u))
        .count()
        .semijoin(cold)
        .map(move |(user, c)| {
            let budget = u32::try_from(n.saturating_add(c as u64)).unwrap_or(u32::MAX);
            (user, budget)
        });
    let ranks = budgets
        .clone()
        .flat_map(|(user, budget)| (0..budget).map(move |rank| (rank, user)));
    let popularity = popularity(
        events,
        &similar.interactions,
        params.popular_within,
        expiry_at,
    );
    let ranked = popular_ranks(popularity, budgets.map(|(_, budget)| budget))
        .arrange_by_key_named("PopularByRank");
    let popular = ranks.join_core(ranked, |&rank, &user, &(item, users)| {
        Some((user, RankInput::Popular(rank, item, users)))
    });
    let inputs = own
        .clone()
        .as_collection(|u, i| (*u, ToRank::Input(RankInput::Own(*i))))
        .concat(dismissed.map(|(u, i)| (u, ToRank::Input(RankInput::Dismissed(i)))))
        .concat(popular.map(|(u, p)| (u, ToRank::Input(p))))
        .concat(weights);
    rank_users(inputs, own.as_collection(|u, i| (*u, *i)), params)
}
