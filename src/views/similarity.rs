//! Similarity: user-user cosine over item sets and item-item cosine over user sets, top `k`
//! neighbours each (DESIGN "Views").
//!
//! A user's item set `I_u` is the distinct items of their *interactions*: events of the types
//! listed in [`Interactions`] that name an item (and, with `min_value`, carry a value at least
//! that). `cosine(u, v) = |I_u ∩ I_v| / sqrt(|I_u| |I_v|)`.
//!
//! Everything in the dataflow is an exact integer count: overlaps, set sizes. Neighbours are
//! ranked by the exact rational `overlap² / (|I_u| |I_v|)` (compared by `u128`
//! cross-multiplication, [`closer`]), ties by the smaller neighbour id, so no worker count or
//! arrival order can change a ranking. Scores leave the dataflow as the fixed-point integer
//! [`cosine_fixed`] and are printed with 6 decimals.
//!
//! Pairs are generated through shared items, and the top `k` kept in place, by the operators of
//! [`super::cosine`].
//! Items with more than `max_item_users` users generate no pairs (they still count in `|I_u|`):
//! a self-join costs the square of a group's size, and items everyone has carry little signal.
//! The item-item view caps users with more than `max_user_items` items the same way.
//!
//! Consent: a user whose latest opt-out/opt-in event is an opt-out ([`opted_out`]) is in neither
//! side of the user-user or item-item similarity; their events still count elsewhere.

use super::cosine::{top_k_cosine_with_state, CosineState, Neighbours};
use super::Diff;
use crate::event::{Event, Sym, UserId, Value};
use differential_dataflow::{ExchangeData, VecCollection};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// Fixed-point scale of scores: a cosine `c` is carried as `round(c * SCORE_SCALE)`.
pub const SCORE_SCALE: i64 = 1_000_000_000_000;

/// Which events are interactions: their type is one of `events`, they name an item, and (when
/// `min_value` is set) their value is present and at least `min_value`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interactions {
    /// Event types that count.
    pub events: Vec<Sym>,
    /// The least value that counts, if values are filtered (e.g. ratings of 4 or more).
    pub min_value: Option<Value>,
}

impl Interactions {
    /// Whether `event` is an interaction; its item if so.
    ///
    /// ```
    /// use behave::event::{Event, UserId, Value};
    /// use behave::views::similarity::Interactions;
    /// let rule = Interactions { events: vec![behave::event::Sym::of("rate")], min_value: Some(Value(4_000_000)) };
    /// let mut e = Event::new(UserId(1), 0, "rate").with_item("film");
    /// assert_eq!(rule.item(&e), None); // no value
    /// e.value = Some(Value(4_000_000));
    /// assert_eq!(rule.item(&e), e.item);
    /// ```
    pub fn item(&self, event: &Event) -> Option<Sym> {
        let item = event.item?;
        if !self.events.contains(&event.kind) {
            return None;
        }
        match self.min_value {
            Some(min) if event.value.is_none_or(|v| v < min) => None,
            _ => Some(item),
        }
    }
}

/// Consent events: a user's latest `opt_out` or `opt_in` event (by event time; on a tie the
/// opt-in wins) decides whether they are opted out of personalization.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    /// The event type that opts a user out.
    pub opt_out: Sym,
    /// The event type that opts them back in, if any.
    pub opt_in: Option<Sym>,
}

/// Parameters of the user-user similarity view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimilarityParams {
    /// Which events are interactions.
    pub interactions: Interactions,
    /// Neighbours kept per user.
    pub k: usize,
    /// Items with more users than this generate no pairs.
    pub max_item_users: u64,
    /// Consent events, if any.
    pub consent: Option<Consent>,
}

/// Parameters of the item-item similarity view (its interactions and consent are those of
/// [`SimilarityParams`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemSimilarityParams {
    /// Neighbours kept per item.
    pub k: usize,
    /// Users with more items than this generate no item pairs.
    pub max_user_items: u64,
}

/// One neighbour of a user (or item): the exact counts its cosine is computed from.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Similar<N> {
    /// The neighbour.
    pub neighbour: N,
    /// Items (users) the two share.
    pub overlap: u64,
    /// Size of the subject's set, `|I_u|`.
    pub size: u64,
    /// Size of the neighbour's set, `|I_v|`.
    pub neighbour_size: u64,
}

impl<N> Similar<N> {
    /// The cosine as a fixed-point integer ([`cosine_fixed`]).
    pub fn fixed(&self) -> i64 {
        cosine_fixed(self.overlap, self.size, self.neighbour_size)
    }
}

/// `round(overlap / sqrt(a * b) * SCORE_SCALE)`, the one conversion of a cosine to an integer
/// used everywhere (dataflow and oracles), so sums of cosines are exact and order-free.
///
/// ```
/// use behave::views::similarity::{cosine_fixed, SCORE_SCALE};
/// assert_eq!(cosine_fixed(2, 2, 2), SCORE_SCALE);
/// assert_eq!(cosine_fixed(1, 1, 4), SCORE_SCALE / 2);
/// assert_eq!(cosine_fixed(0, 3, 0), 0);
/// ```
pub fn cosine_fixed(overlap: u64, a: u64, b: u64) -> i64 {
    if overlap == 0 || a == 0 || b == 0 {
        return 0;
    }
    let cosine = overlap as f64 / ((a as f64) * (b as f64)).sqrt();
    (cosine * SCORE_SCALE as f64).round() as i64
}

/// A fixed-point score as a float (for printing with 6 decimals).
pub fn fixed_to_f64(fixed: i64) -> f64 {
    fixed as f64 / SCORE_SCALE as f64
}

/// The neighbour order: higher exact cosine first (`overlap² / (size · neighbour_size)`, compared
/// by `u128` cross-multiplication), then the smaller neighbour.
///
/// ```
/// use behave::views::similarity::{closer, Similar};
/// use std::cmp::Ordering;
/// let a = Similar { neighbour: 2u64, overlap: 1, size: 2, neighbour_size: 2 }; // 0.5
/// let b = Similar { neighbour: 1u64, overlap: 2, size: 2, neighbour_size: 8 }; // 0.5
/// assert_eq!(closer(&b, &a), Ordering::Less); // same cosine: smaller neighbour first
/// let c = Similar { neighbour: 3u64, overlap: 2, size: 2, neighbour_size: 3 };
/// assert_eq!(closer(&c, &a), Ordering::Less);
/// ```
pub fn closer<N: Ord>(a: &Similar<N>, b: &Similar<N>) -> Ordering {
    let lhs = u128::from(a.overlap).pow(2) * u128::from(b.size) * u128::from(b.neighbour_size);
    let rhs = u128::from(b.overlap).pow(2) * u128::from(a.size) * u128::from(a.neighbour_size);
    rhs.cmp(&lhs).then_with(|| a.neighbour.cmp(&b.neighbour))
}

/// Users opted out of personalization: those whose latest consent event (by event time; on a
/// tie the opt-in wins) is an opt-out.
pub fn opted_out<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    consent: &Consent,
) -> VecCollection<'s, u64, UserId, Diff> {
    let consent = consent.clone();
    events
        .flat_map(move |e| {
            if Some(e.kind) == consent.opt_in {
                Some((e.user, (e.time, true)))
            } else if e.kind == consent.opt_out {
                Some((e.user, (e.time, false)))
            } else {
                None
            }
        })
        .reduce_named(
            "LatestConsent",
            |_user, input: &[(&(i64, bool), Diff)], output: &mut Vec<((), Diff)>| {
                let latest = input.iter().filter(|(_, r)| *r > 0).map(|(v, _)| **v).max();
                if let Some((_, false)) = latest {
                    output.push(((), 1));
                }
            },
        )
        .map(|(user, ())| user)
}

/// Every user's interactions `(user, item)`, as a set (all users, opted out or not).
pub fn interactions<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    rule: &Interactions,
) -> VecCollection<'s, u64, (UserId, Sym), Diff> {
    let rule = rule.clone();
    events
        .flat_map(move |e| rule.item(&e).map(|item| (e.user, item)))
        .distinct()
}

/// The interactions that feed similarity: [`interactions`] minus those of opted-out users.
pub fn similarity_interactions<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    params: &SimilarityParams,
) -> VecCollection<'s, u64, (UserId, Sym), Diff> {
    let all = interactions(events.clone(), &params.interactions);
    match &params.consent {
        None => all,
        Some(consent) => all.antijoin(opted_out(events, consent)),
    }
}

/// Top-`k` cosine neighbours of every member over group memberships `(group, member)` (a set):
/// members are similar when they share groups. Groups with more than `max_group` members
/// generate no pairs. The core of both similarity views, maintained in place by the operators
/// of [`super::cosine`].
pub fn top_k_cosine<'s, G, M>(
    memberships: VecCollection<'s, u64, (G, M), Diff>,
    k: usize,
    max_group: u64,
) -> VecCollection<'s, u64, (M, Similar<M>), Diff>
where
    G: ExchangeData + std::hash::Hash,
    M: ExchangeData + std::hash::Hash + Copy,
{
    top_k_cosine_with_state(memberships, k, max_group).0
}

/// User-user similarity: the top `params.k` neighbours `(user, Similar { neighbour, .. })` of
/// every user not opted out, by cosine over item sets (see the module docs).
///
/// ```
/// use behave::event::{Event, Sym, UserId};
/// use behave::views::similarity::{similarity, Interactions, SimilarityParams};
/// use differential_dataflow::input::InputSession;
/// use std::sync::{Arc, Mutex};
///
/// let params = SimilarityParams {
///     interactions: Interactions { events: vec![Sym::of("like")], min_value: None },
///     k: 1,
///     max_item_users: 500,
///     consent: None,
/// };
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let out = seen.clone();
/// timely::execute_directly(move |worker| {
///     let mut input: InputSession<u64, Event, isize> = InputSession::new();
///     worker.dataflow::<u64, _, _>(|scope| {
///         let out = out.clone();
///         similarity(input.to_collection(scope), &params)
///             .inspect(move |((u, s), _, r)| out.lock().unwrap().push((u.0, s.neighbour.0, s.fixed(), *r)));
///     });
///     for (user, item) in [(1, "a"), (1, "b"), (2, "a"), (2, "b"), (3, "a")] {
///         input.insert(Event::new(UserId(user), 0, "like").with_item(item));
///     }
///     input.close();
/// });
/// let mut seen = seen.lock().unwrap().clone();
/// seen.sort();
/// // 1 and 2 share both items (cosine 1); 3 is closest to 1 (cosine 1/sqrt 2, tie with 2).
/// assert_eq!(seen, vec![(1, 2, 1_000_000_000_000, 1), (2, 1, 1_000_000_000_000, 1), (3, 1, 707_106_781_187, 1)]);
/// ```
pub fn similarity<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    params: &SimilarityParams,
) -> VecCollection<'s, u64, (UserId, Similar<UserId>), Diff> {
    similarity_with_state(events, params).0
}

/// [`similarity`], with a handle on its operators' state (groups are items, members users) for
/// the forget audit.
pub fn similarity_with_state<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    params: &SimilarityParams,
) -> (Neighbours<'s, UserId>, CosineState<Sym, UserId>) {
    let by_item = similarity_interactions(events, params).map(|(user, item)| (item, user));
    top_k_cosine_with_state(by_item, params.k, params.max_item_users)
}

/// Item-item similarity ("people who interacted with this also interacted with"): the top
/// `item.k` neighbours of every item by cosine over the sets of users (not opted out) who
/// interacted with it.
pub fn item_similarity<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    params: &SimilarityParams,
    item: &ItemSimilarityParams,
) -> VecCollection<'s, u64, (Sym, Similar<Sym>), Diff> {
    item_similarity_with_state(events, params, item).0
}

/// [`item_similarity`], with a handle on its operators' state (groups are users, members items)
/// for the forget audit.
pub fn item_similarity_with_state<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    params: &SimilarityParams,
    item: &ItemSimilarityParams,
) -> (Neighbours<'s, Sym>, CosineState<UserId, Sym>) {
    top_k_cosine_with_state(
        similarity_interactions(events, params),
        item.k,
        item.max_user_items,
    )
}
