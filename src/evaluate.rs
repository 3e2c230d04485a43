//! Offline evaluation of the recommendations view: hold out part of each user's interactions,
//! build the views on the rest, and score the top-`k` lists against the held-out items with the
//! ranking metrics of Microsoft Recommenders (`recommenders.evaluation.python_evaluation`), beside
//! a popularity baseline.
//!
//! Metric definitions (binary relevance; `n_users` = users with both held-out items and a list;
//! `hits_u` = items of the top `k` that are held out for `u`; ranks from 1):
//! - `precision@k = Σ_u hits_u / k / n_users`;
//! - `recall@k = Σ_u hits_u / |test_u| / n_users`;
//! - `map@k = Σ_u (Σ_{j-th hit, at rank r} j / r) / |test_u| / n_users` (their `map_at_k` as used
//!   for the published benchmark rows; the newer `map_at_k` divides by `min(|test_u|, k)`);
//! - `ndcg@k`: `DCG = Σ_hits 1 / ln(1 + rank)`, ideal `Σ_{i=1}^{min(|test_u|, k)} 1 / ln(1 + i)`,
//!   averaged over users with held-out items.

use crate::event::{Event, Sym, UserId};
use crate::ingest::{ingest, Epoch, IngestError, IngestOptions, Names, Routing};
use crate::privacy::{load_key, KeyError};
use crate::runtime::{Cluster, Row, Runner, RuntimeError, ViewConfig};
use crate::spec::Spec;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Why an evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    /// The spec has no `[similarity]` and `[recommendations]` to evaluate.
    #[error("the spec has no [similarity] and [recommendations] tables to evaluate")]
    NoRecommendations,
    /// A bad option.
    #[error("{0}")]
    Option(String),
    /// No pseudonymization key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The input is unusable.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The dataflow failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

/// How to hold out events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Each user's last `1 − ratio` of interactions by time (ties by input order).
    Temporal,
    /// A random `1 − ratio` of each user's interactions (stratified by user), seeded.
    Random {
        /// The seed of the shuffle.
        seed: u64,
    },
}

/// Ranking metrics of one model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Metrics {
    /// Mean average precision at k.
    pub map: f64,
    /// Normalized discounted cumulative gain at k.
    pub ndcg: f64,
    /// Precision at k.
    pub precision: f64,
    /// Recall at k.
    pub recall: f64,
}

/// Scores top-`k` lists against held-out items (see the module docs for the definitions).
///
/// ```
/// use behave::evaluate::metrics;
/// use std::collections::{BTreeMap, BTreeSet};
/// // One user, held out {1, 2}; the list [1, 3, 2]: hits at ranks 1 and 3.
/// let test = BTreeMap::from([(7u64, BTreeSet::from([1u64, 2]))]);
/// let lists = BTreeMap::from([(7u64, vec![1u64, 3, 2])]);
/// let m = metrics(&lists, &test, 3);
/// assert!((m.precision - 2.0 / 3.0).abs() < 1e-12);
/// assert!((m.recall - 1.0).abs() < 1e-12);
/// assert!((m.map - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
/// let dcg = 1.0 / 2f64.ln() + 1.0 / 4f64.ln();
/// let ideal = 1.0 / 2f64.ln() + 1.0 / 3f64.ln();
/// assert!((m.ndcg - dcg / ideal).abs() < 1e-12);
/// ```
pub fn metrics<U: Ord, I: Ord>(
    lists: &BTreeMap<U, Vec<I>>,
    test: &BTreeMap<U, BTreeSet<I>>,
    k: usize,
) -> Metrics {
    let mut sum = Metrics::default();
    let mut users = 0usize;
    let mut ndcg_users = 0usize;
    for (user, relevant) in test {
        if relevant.is_empty() {
            continue;
        }
        ndcg_users += 1;
        // As in the reference, only users with a (non-empty) list count, except in NDCG.
        let Some(list) = lists.get(user).filter(|l| !l.is_empty()) else {
            continue;
        };
        users += 1;
        let mut hits = 0usize;
        let mut precision_sum = 0.0;
        let mut dcg = 0.0;
        for (i, item) in list.iter().take(k).enumerate() {
            if relevant.contains(item) {
                hits += 1;
                let rank = (i + 1) as f64;
                precision_sum += hits as f64 / rank;
                dcg += 1.0 / (1.0 + rank).ln();
            }
        }
        let ideal: f64 = (1..=relevant.len().min(k))
            .map(|i| 1.0 / (1.0 + i as f64).ln())
            .sum();
        sum.precision += hits as f64 / k as f64;
        sum.recall += hits as f64 / relevant.len() as f64;
        sum.map += precision_sum / relevant.len() as f64;
        sum.ndcg += dcg / ideal;
    }
    let per = |x: f64, n: usize| if n == 0 { 0.0 } else { x / n as f64 };
    Metrics {
        map: per(sum.map, users),
        ndcg: per(sum.ndcg, ndcg_users),
        precision: per(sum.precision, users),
        recall: per(sum.recall, users),
    }
}

/// A small seeded generator (SplitMix64) for the random split: deterministic on every platform.
#[derive(Clone, Debug)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform integer below `n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Splits each user's `interactions` (indices into the event list, in input order) into
/// training and held-out parts: `round(ratio × n)` events train, the rest are held out.
/// Returns the held-out indices.
///
/// ```
/// use behave::evaluate::{hold_out, Split};
/// // Times 5, 1, 3, 2 of one user: temporal 0.75 holds out the latest (index 0).
/// let by_user = vec![vec![(5, 0), (1, 1), (3, 2), (2, 3)]];
/// assert_eq!(hold_out(&by_user, Split::Temporal, 0.75), vec![0]);
/// assert_eq!(hold_out(&by_user, Split::Random { seed: 42 }, 0.75).len(), 1);
/// ```
pub fn hold_out(by_user: &[Vec<(i64, usize)>], split: Split, ratio: f64) -> Vec<usize> {
    let mut rng = match split {
        Split::Random { seed } => Some(SplitMix::new(seed)),
        Split::Temporal => None,
    };
    let mut held = Vec::new();
    for events in by_user {
        let mut events = events.clone();
        events.sort();
        if let Some(rng) = rng.as_mut() {
            for i in (1..events.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                events.swap(i, j);
            }
        }
        let train = ((events.len() as f64) * ratio).round() as usize;
        held.extend(events[train.min(events.len())..].iter().map(|(_, i)| *i));
    }
    held.sort_unstable();
    held
}

/// What to evaluate.
#[derive(Clone, Debug)]
pub struct EvaluateOptions {
    /// How to hold out.
    pub split: Split,
    /// The training share of each user's interactions.
    pub ratio: f64,
    /// List length scored.
    pub k: usize,
}

/// The evaluation: models in print order with their metrics, and the sizes involved.
#[derive(Clone, Debug, Serialize)]
pub struct Evaluation {
    /// `(model, metrics)`: `user_cf` (the recommendations view), `item_cf` (item-item scores
    /// from the item_similarity view, when the spec has one) and `popularity`.
    pub models: Vec<(String, Metrics)>,
    /// Events used for training.
    pub train_events: usize,
    /// Held-out events.
    pub test_events: usize,
    /// Users scored.
    pub users: usize,
}

impl Evaluation {
    /// `{"<model>": {"map@k": …, "ndcg@k": …, "precision@k": …, "recall@k": …}, …}`.
    pub fn json(&self, k: usize) -> serde_json::Value {
        let mut object = serde_json::Map::new();
        for (model, m) in &self.models {
            object.insert(
                model.clone(),
                serde_json::json!({
                    format!("map@{k}"): m.map,
                    format!("ndcg@{k}"): m.ndcg,
                    format!("precision@{k}"): m.precision,
                    format!("recall@{k}"): m.recall,
                }),
            );
        }
        serde_json::Value::Object(object)
    }

    /// The table as text: one row per model, metrics with 4 decimals.
    pub fn text(&self, k: usize) -> String {
        let mut out = format!(
            "{:<12} {:>8} {:>8} {:>8} {:>8}\n",
            "model",
            format!("map@{k}"),
            format!("ndcg@{k}"),
            format!("p@{k}"),
            format!("r@{k}")
        );
        for (model, m) in &self.models {
            out.push_str(&format!(
                "{model:<12} {:>8.4} {:>8.4} {:>8.4} {:>8.4}\n",
                m.map, m.ndcg, m.precision, m.recall
            ));
        }
        out
    }
}

/// Evaluates the spec's recommendations (see the module docs).
pub fn evaluate(spec: &Spec, options: &EvaluateOptions) -> Result<Evaluation, EvaluateError> {
    let similarity = spec
        .similarity
        .as_ref()
        .map(|s| s.to_view())
        .ok_or(EvaluateError::NoRecommendations)?;
    let mut recommend = spec
        .recommend_params()
        .ok_or(EvaluateError::NoRecommendations)?;
    if !(options.ratio > 0.0 && options.ratio < 1.0) {
        return Err(EvaluateError::Option(format!(
            "--ratio must be between 0 and 1, found {}",
            options.ratio
        )));
    }
    if options.k == 0 {
        return Err(EvaluateError::Option("--k must be at least 1".into()));
    }
    let (events, _names) = read_events(spec)?;
    // The events that can be held out: every event of an interaction type with an item (all
    // values: a held-out rating is relevant whatever its value, as in the reference protocol).
    let kinds = &similarity.interactions.events;
    let mut by_user: BTreeMap<UserId, Vec<(i64, usize)>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        if e.item.is_some() && kinds.contains(&e.kind) {
            by_user.entry(e.user).or_default().push((e.time, i));
        }
    }
    let groups: Vec<Vec<(i64, usize)>> = by_user.into_values().collect();
    let held: BTreeSet<usize> = hold_out(&groups, options.split, options.ratio)
        .into_iter()
        .collect();
    let mut train = Vec::new();
    let mut test: BTreeMap<UserId, BTreeSet<Sym>> = BTreeMap::new();
    for (i, e) in events.into_iter().enumerate() {
        if held.contains(&i) {
            if let Some(item) = e.item {
                test.entry(e.user).or_default().insert(item);
            }
        } else {
            train.push(e);
        }
    }
    // Every item a user has a training event of an interaction type on is "seen": removed from
    // the lists as the reference protocol does, also when `min_value` keeps it out of `I_u`. The
    // view is asked for enough extra items to fill k after that.
    let mut seen: HashMap<UserId, BTreeSet<Sym>> = HashMap::new();
    for e in &train {
        if let (Some(item), true) = (e.item, kinds.contains(&e.kind)) {
            seen.entry(e.user).or_default().insert(item);
        }
    }
    let mut kept: HashMap<UserId, BTreeSet<Sym>> = HashMap::new();
    for e in &train {
        if let Some(item) = similarity.interactions.item(e) {
            kept.entry(e.user).or_default().insert(item);
        }
    }
    let none = BTreeSet::new();
    let extra = seen
        .iter()
        .map(|(user, items)| items.difference(kept.get(user).unwrap_or(&none)).count())
        .max()
        .unwrap_or(0);
    recommend.n = options.k + extra;
    let mut views = ViewConfig::sessions_and_engagement(1);
    views.sessions = None;
    views.engagement = None;
    views.similarity = Some(similarity.clone());
    views.recommendations = Some(recommend);
    let as_of = train.iter().map(|e| e.time).max().unwrap_or(0).max(0);
    let snapshot = run_views(views, &train, as_of)?;
    let mut lists: BTreeMap<UserId, Vec<(u32, Sym)>> = BTreeMap::new();
    for row in snapshot {
        if let Row::Recommendation(user, r) = row {
            lists.entry(user).or_default().push((r.rank, r.item));
        }
    }
    let empty = BTreeSet::new();
    let user_cf: BTreeMap<UserId, Vec<Sym>> = lists
        .into_iter()
        .map(|(user, mut ranked)| {
            ranked.sort();
            let seen = seen.get(&user).unwrap_or(&empty);
            let list = ranked
                .into_iter()
                .map(|(_, item)| item)
                .filter(|item| !seen.contains(item))
                .take(options.k)
                .collect();
            (user, list)
        })
        .collect();
    let popular = popularity_lists(
        &train,
        &similarity.interactions,
        &seen,
        test.keys(),
        options.k,
    );
    let test_events = held.len();
    Ok(Evaluation {
        models: vec![
            ("user_cf".into(), metrics(&user_cf, &test, options.k)),
            ("popularity".into(), metrics(&popular, &test, options.k)),
        ],
        train_events: train.len(),
        test_events,
        users: test.len(),
    })
}

/// The popularity baseline: items by number of distinct users with an interaction in training
/// (ties by symbol), minus the user's seen items, top `k`.
fn popularity_lists<'a>(
    train: &[Event],
    rule: &crate::views::similarity::Interactions,
    seen: &HashMap<UserId, BTreeSet<Sym>>,
    users: impl Iterator<Item = &'a UserId>,
    k: usize,
) -> BTreeMap<UserId, Vec<Sym>> {
    let mut users_of: BTreeMap<Sym, BTreeSet<UserId>> = BTreeMap::new();
    for e in train {
        if let Some(item) = rule.item(e) {
            users_of.entry(item).or_default().insert(e.user);
        }
    }
    let mut ranked: Vec<(usize, Sym)> = users_of.iter().map(|(i, u)| (u.len(), *i)).collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let empty = BTreeSet::new();
    users
        .map(|user| {
            let seen = seen.get(user).unwrap_or(&empty);
            let list = ranked
                .iter()
                .map(|(_, item)| *item)
                .filter(|item| !seen.contains(item))
                .take(k)
                .collect();
            (*user, list)
        })
        .collect()
}

/// Reads the spec's input (forget requests applied) into the surviving events, in input order.
pub fn read_events(spec: &Spec) -> Result<(Vec<Event>, Names), EvaluateError> {
    let (key, _) = load_key(&spec.input)?;
    let mut updates: Vec<(Event, isize)> = Vec::new();
    let mut emit = |epoch: Epoch| {
        for shard in epoch.shards {
            updates.extend(shard);
        }
    };
    let report = ingest(
        IngestOptions {
            input: &spec.input,
            events: &spec.input.events,
            forget: spec.input.forget.as_deref(),
            routing: Routing::single(spec.tick.0, 1),
            key: &key,
            reveal: false,
            as_of: None,
            progress: None,
        },
        &mut emit,
    )?;
    // Retractions cancel their insertions; keep the first copy of each surviving event.
    let mut net: HashMap<Event, isize> = HashMap::new();
    for (event, diff) in &updates {
        *net.entry(event.clone()).or_insert(0) += diff;
    }
    let mut events = Vec::new();
    for (event, diff) in updates {
        if diff > 0 {
            if let Some(n) = net.get_mut(&event) {
                if *n > 0 {
                    *n -= 1;
                    events.push(event);
                }
            }
        }
    }
    Ok((events, report.names))
}

/// Builds `views` over `events` on one worker and returns the snapshot rows at `as_of`.
pub fn run_views(
    views: ViewConfig,
    events: &[Event],
    as_of: i64,
) -> Result<Vec<Row>, RuntimeError> {
    let runner = Runner::start(Cluster::local(1), views)?;
    runner.sync(Epoch {
        time: as_of as u64,
        shards: vec![events.iter().map(|e| (e.clone(), 1)).collect()],
    })?;
    let finished = runner.finish(as_of, Vec::new())?;
    Ok(finished
        .snapshot
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(row, _)| row)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_by_hand() {
        // User 1: held out {a, b, c}; list [x, a, y, b]: hits at 2 and 4.
        // User 2: held out {d}, an empty list; user 3 has no list. Neither is scored except in
        // NDCG (as the reference does, from the held-out side).
        let test = BTreeMap::from([
            (1, BTreeSet::from(["a", "b", "c"])),
            (2, BTreeSet::from(["d"])),
            (3, BTreeSet::from(["e"])),
        ]);
        let lists = BTreeMap::from([(1, vec!["x", "a", "y", "b"]), (2, vec![])]);
        let m = metrics(&lists, &test, 4);
        // Only user 1 has a list: n_users = 1.
        assert!((m.precision - 2.0 / 4.0).abs() < 1e-12);
        assert!((m.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.map - (1.0 / 2.0 + 2.0 / 4.0) / 3.0).abs() < 1e-12);
        let dcg = 1.0 / 3f64.ln() + 1.0 / 5f64.ln();
        let ideal = 1.0 / 2f64.ln() + 1.0 / 3f64.ln() + 1.0 / 4f64.ln();
        assert!((m.ndcg - dcg / ideal / 3.0).abs() < 1e-12);
    }

    #[test]
    fn split_sizes_and_determinism() {
        let by_user: Vec<Vec<(i64, usize)>> = (0..5)
            .map(|u| (0..8).map(|i| (i as i64, u * 8 + i)).collect())
            .collect();
        let a = hold_out(&by_user, Split::Random { seed: 7 }, 0.75);
        let b = hold_out(&by_user, Split::Random { seed: 7 }, 0.75);
        let c = hold_out(&by_user, Split::Random { seed: 8 }, 0.75);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 5 * 2);
        // Two per user.
        for u in 0..5 {
            assert_eq!(a.iter().filter(|i| **i / 8 == u).count(), 2);
        }
        let t = hold_out(&by_user, Split::Temporal, 0.75);
        assert_eq!(t, vec![6, 7, 14, 15, 22, 23, 30, 31, 38, 39]);
    }

    #[test]
    fn splitmix_is_uniform_enough() {
        let mut rng = SplitMix::new(1);
        let mut counts = [0u32; 4];
        for _ in 0..4_000 {
            counts[rng.below(4) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (900..1100).contains(c)), "{counts:?}");
    }
}
