//! Segments: named sets of users, maintained as `(segment, user)` membership plus sizes.
//!
//! Three kinds (DESIGN "Views"), each relative to the as-of time of the snapshot through a
//! sliding window of `within` seconds (see [`window`](super::window)):
//! - [`Rule`]: performed a given event (with property filters) at least `at_least` times within
//!   the window, and optionally no event of a `without` type within the same window;
//! - [`Percentile`]: event count (or sum of values, of all events or one type) within the
//!   window at or above the nearest-rank percentile of those of all users active within it;
//! - [`Dormant`]: seen before, but no event within the window.
//!
//! Membership changes when time passes, not only when events arrive: an event leaving the window
//! is retracted at `time + within` (or at the next tick after it, see
//! [`Expiry`]), so a user can leave a rule segment, or enter the dormant
//! one, with no new event at all. Like the windows, these views use `u64` logical time (event seconds).
//!
//! Each kind keeps a few counters per user ([`fold_by_key`]): events
//! in the window, events ever seen, so an event costs a counter update rather than a pass
//! through an arrangement.
//!
//! Segment sizes are exact counts; k-anonymity suppression is an output concern ([`shown_size`]).

use super::fold::fold_by_key;
use super::percentile::{at_or_above, percentile_thresholds, PercentileState};
use super::window::{sliding_project, Expiry};
use super::Diff;
use crate::event::{Event, Sym, UserId};
use differential_dataflow::operators::CountTotal;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};

/// A rule segment: users who performed `event`, with every property filter matching, at least
/// `at_least` times within the last `within` seconds, and (when `without` is set) no event of
/// type `without` within the same window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Segment name; the output is keyed by `Sym::of(name)`.
    pub name: String,
    /// The event type that counts.
    pub event: Sym,
    /// Property equality filters `(property, value)`: an event counts only if it has every one.
    pub filters: Vec<(Sym, Sym)>,
    /// Minimum number of matching events. `0` behaves like `1`: a user with no matching event
    /// in the window is never a member.
    pub at_least: u64,
    /// Window length in seconds.
    pub within: i64,
    /// An event type that excludes: a user with any event of this type (whatever its properties)
    /// within the window is not a member, e.g. cart abandoners are users who added to the cart
    /// but did not purchase. `None` excludes nobody.
    #[serde(default)]
    pub without: Option<Sym>,
}

/// A percentile segment: among users with at least one counted event (every event, or those of
/// type `event`) within the last `within` seconds, those whose [`Metric`] is at or above the
/// nearest-rank `percentile`-th percentile of all their metrics (rank `ceil(P/100 * n)` in the
/// ascending order of the `n` values; every user tied with the threshold is a member).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percentile {
    /// Segment name; the output is keyed by `Sym::of(name)`.
    pub name: String,
    /// The percentile `P`, `1..=100` (values outside are clamped into that range).
    pub percentile: u32,
    /// Window length in seconds.
    pub within: i64,
    /// Only events of this type count (e.g. purchases, for top buyers); `None` counts all.
    pub event: Option<Sym>,
    /// What users are ranked by.
    pub metric: Metric,
}

/// What a percentile segment ranks users by, over their counted events in the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// The number of events.
    #[default]
    Count,
    /// The sum of the events' `value`s (e.g. revenue; events without a value add 0), exact in
    /// millionths.
    Value,
}

/// A dormant segment: users with at least one event at or before the as-of time, but none within
/// the last `within` seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dormant {
    /// Segment name; the output is keyed by `Sym::of(name)`.
    pub name: String,
    /// Window length in seconds.
    pub within: i64,
}

/// Any segment definition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Segment {
    /// See [`Rule`].
    Rule(Rule),
    /// See [`Percentile`].
    Percentile(Percentile),
    /// See [`Dormant`].
    Dormant(Dormant),
}

impl Segment {
    /// The segment's name.
    pub fn name(&self) -> &str {
        match self {
            Segment::Rule(r) => &r.name,
            Segment::Percentile(p) => &p.name,
            Segment::Dormant(d) => &d.name,
        }
    }

    /// The key of the segment in membership and size collections: `Sym::of(name)`.
    ///
    /// ```
    /// use behave::event::Sym;
    /// use behave::views::segments::{Dormant, Segment};
    /// let s = Segment::Dormant(Dormant { name: "lapsed".into(), within: 86_400 });
    /// assert_eq!(s.key(), Sym::of("lapsed"));
    /// ```
    pub fn key(&self) -> Sym {
        Sym::of(self.name())
    }
}

/// Whether `event` counts for `rule`: the right type and every property filter matching.
///
/// ```
/// use behave::event::{Event, Sym, UserId};
/// use behave::views::segments::{matches, Rule};
/// let rule = Rule {
///     name: "buyers".into(),
///     event: Sym::of("buy"),
///     filters: vec![(Sym::of("country"), Sym::of("FR"))],
///     at_least: 1,
///     within: 86_400,
///     without: None,
/// };
/// let mut e = Event::new(UserId(1), 0, "buy");
/// assert!(!matches(&rule, &e));
/// e.props = vec![(Sym::of("country"), Sym::of("FR"))];
/// assert!(matches(&rule, &e));
/// ```
pub fn matches(rule: &Rule, event: &Event) -> bool {
    event.kind == rule.event
        && rule
            .filters
            .iter()
            .all(|(name, value)| event.prop(*name) == Some(*value))
}

/// Members of a rule segment: `(Sym::of(rule.name), user)` for every user with at least
/// `rule.at_least` matching events in the last `rule.within` seconds and, when `rule.without` is
/// set, no event of that type in the same window. Both windows slide, so a user leaves when their
/// matching events leave the window, and (re-)enters when their last `without` event leaves it.
///
/// ```
/// use behave::event::{Event, Sym, UserId};
/// use behave::views::segments::{rule_members, Rule};
/// use behave::views::window::Expiry;
/// use differential_dataflow::input::InputSession;
/// use std::sync::{Arc, Mutex};
///
/// let rule = Rule {
///     name: "active".into(),
///     event: Sym::of("view"),
///     filters: vec![],
///     at_least: 2,
///     within: 100,
///     without: None,
/// };
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let out = seen.clone();
/// timely::execute_directly(move |worker| {
///     let mut input: InputSession<u64, Event, isize> = InputSession::new();
///     worker.dataflow::<u64, _, _>(|scope| {
///         let out = out.clone();
///         rule_members(input.to_collection(scope), &rule, &Expiry::Exact)
///             .inspect(move |(m, t, r)| out.lock().unwrap().push((m.1, *t, *r)));
///     });
///     input.advance_to(10);
///     input.insert(Event::new(UserId(1), 10, "view"));
///     input.advance_to(50);
///     input.insert(Event::new(UserId(1), 50, "view"));
///     input.close();
/// });
/// let mut seen = seen.lock().unwrap().clone();
/// seen.sort();
/// // A member from the second view until the first one leaves the window.
/// assert_eq!(seen, vec![(UserId(1), 50, 1), (UserId(1), 110, -1)]);
/// ```
///
/// With `without`, e.g. cart abandoners (added to the cart, no purchase in the window):
///
/// ```
/// use behave::event::{Event, Sym, UserId};
/// use behave::views::segments::{rule_members, Rule};
/// use behave::views::window::Expiry;
/// use differential_dataflow::input::InputSession;
/// use std::sync::{Arc, Mutex};
///
/// let rule = Rule {
///     name: "abandoners".into(),
///     event: Sym::of("add_to_cart"),
///     filters: vec![],
///     at_least: 1,
///     within: 100,
///     without: Some(Sym::of("purchase")),
/// };
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let out = seen.clone();
/// timely::execute_directly(move |worker| {
///     let mut input: InputSession<u64, Event, isize> = InputSession::new();
///     worker.dataflow::<u64, _, _>(|scope| {
///         let out = out.clone();
///         rule_members(input.to_collection(scope), &rule, &Expiry::Exact)
///             .consolidate()
///             .inspect(move |(m, t, r)| out.lock().unwrap().push((m.1, *t, *r)));
///     });
///     input.advance_to(10);
///     input.insert(Event::new(UserId(1), 10, "purchase"));
///     input.advance_to(50);
///     input.insert(Event::new(UserId(1), 50, "add_to_cart"));
///     input.close();
/// });
/// let mut seen = seen.lock().unwrap().clone();
/// seen.sort_by_key(|(_, t, _)| *t);
/// // An abandoner once the purchase leaves the window (110), until the cart add does (150).
/// assert_eq!(seen, vec![(UserId(1), 110, 1), (UserId(1), 150, -1)]);
/// ```
pub fn rule_members<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    rule: &Rule,
    expiry_at: &Expiry<'s>,
) -> VecCollection<'s, u64, (Sym, UserId), Diff> {
    let key = Sym::of(&rule.name);
    let at_least = rule.at_least.max(1) as i64;
    let predicate = rule.clone();
    // Each event in the window as (matching, excluding): whether it counts, and whether it is of
    // the `without` type.
    let without = rule.without;
    let relevant =
        events.filter(move |event| matches(&predicate, event) || without == Some(event.kind));
    let predicate = rule.clone();
    let window = recent(relevant, rule.within, expiry_at, move |event| {
        (matches(&predicate, event), without == Some(event.kind))
    });
    fold_by_key(
        window,
        "RuleSegment",
        |(matching, excluded): &mut (i64, i64), &(counts, excludes): &(bool, bool), diff| {
            *matching += i64::from(counts) * diff as i64;
            *excluded += i64::from(excludes) * diff as i64;
        },
        move |user, &(matching, excluded), rows| {
            if matching >= at_least && excluded == 0 {
                rows.push((key, *user));
            }
        },
    )
}

/// The nearest-rank `percentile`-th percentile of a histogram: `histogram` holds
/// `(metric, number of users with that metric)` sorted by metric ascending (entries with no
/// users are skipped). Returns the threshold metric, or `None` when there are no users.
///
/// ```
/// use behave::views::segments::percentile_threshold;
/// // Counts 1, 1, 2, 5: n = 4; the 50th percentile has rank 2 (count 1), the 51st rank 3.
/// let h = [(1, 2), (2, 1), (5, 1)];
/// assert_eq!(percentile_threshold(h, 50), Some(1));
/// assert_eq!(percentile_threshold(h, 51), Some(2));
/// assert_eq!(percentile_threshold(h, 100), Some(5));
/// assert_eq!(percentile_threshold::<u64>([], 90), None);
/// ```
pub fn percentile_threshold<M: Copy>(
    histogram: impl IntoIterator<Item = (M, i64)> + Clone,
    percentile: u32,
) -> Option<M> {
    let p = u128::from(percentile.clamp(1, 100));
    let users: u128 = histogram
        .clone()
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(_, n)| n as u128)
        .sum();
    if users == 0 {
        return None;
    }
    let rank = (p * users).div_ceil(100);
    let mut seen = 0u128;
    for (count, n) in histogram {
        if n > 0 {
            seen += n as u128;
            if seen >= rank {
                return Some(count);
            }
        }
    }
    None
}

/// Members of a percentile segment: `(Sym::of(name), user)` for every user with a counted event
/// within the window whose [`Metric`] there is at or above the nearest-rank percentile of all
/// such users' metrics ([`percentile_threshold`]).
///
/// Each user's metric is a running count and sum over their windowed events ([`fold_by_key`]).
/// The threshold and the users at or above it are kept by the operators of
/// [`percentile`](super::percentile): a change costs the distinct metrics the threshold crosses
/// and the users whose membership changes, not a pass over all users.
pub fn percentile_members<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    segment: &Percentile,
    expiry_at: &Expiry<'s>,
) -> VecCollection<'s, u64, (Sym, UserId), Diff> {
    percentile_members_with_state(events, segment, expiry_at).0
}

/// [`percentile_members`], with the operator state that names users (for the forget audit).
pub fn percentile_members_with_state<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    segment: &Percentile,
    expiry_at: &Expiry<'s>,
) -> (VecCollection<'s, u64, (Sym, UserId), Diff>, PercentileState) {
    let key = Sym::of(&segment.name);
    let percentile = segment.percentile;
    let counted = match segment.event {
        Some(kind) => events.filter(move |event| event.kind == kind),
        None => events,
    };
    let window = recent(counted, segment.within, expiry_at, |event| {
        event.value.map_or(0, |v| v.0)
    });
    let metric = segment.metric;
    // Each user's (events, sum of values) in the window; users with no counted event have none.
    let metrics = fold_by_key(
        window,
        "PercentileMetric",
        |(events, sum): &mut (i64, i64), value: &i64, diff| {
            *events += diff as i64;
            *sum += *value * diff as i64;
        },
        move |user, &(events, sum), rows| {
            if events > 0 {
                let value = match metric {
                    Metric::Count => events,
                    Metric::Value => sum,
                };
                rows.push((value, *user));
            }
        },
    );
    let thresholds = percentile_thresholds(metrics.clone(), key, percentile);
    at_or_above(metrics, thresholds, key)
}

/// Members of a dormant segment: `(Sym::of(name), user)` for every user with an event at or
/// before the as-of time but none in the last `within` seconds. A user becomes dormant when
/// their last event leaves the window, with no new event needed.
///
/// ```
/// use behave::event::{Event, UserId};
/// use behave::views::segments::{dormant_members, Dormant};
/// use behave::views::window::Expiry;
/// use differential_dataflow::input::InputSession;
/// use std::sync::{Arc, Mutex};
///
/// let segment = Dormant { name: "lapsed".into(), within: 100 };
/// let seen = Arc::new(Mutex::new(Vec::new()));
/// let out = seen.clone();
/// timely::execute_directly(move |worker| {
///     let mut input: InputSession<u64, Event, isize> = InputSession::new();
///     worker.dataflow::<u64, _, _>(|scope| {
///         let out = out.clone();
///         dormant_members(input.to_collection(scope), &segment, &Expiry::Exact)
///             .consolidate()
///             .inspect(move |(m, t, r)| out.lock().unwrap().push((m.1, *t, *r)));
///     });
///     input.advance_to(10);
///     input.insert(Event::new(UserId(1), 10, "view"));
///     input.advance_to(150);
///     input.insert(Event::new(UserId(1), 150, "view"));
///     input.close();
/// });
/// let mut seen = seen.lock().unwrap().clone();
/// seen.sort_by_key(|(_, t, _)| *t);
/// // Dormant from 110 (first view out of the window) until the second view at 150,
/// // and again from 250.
/// assert_eq!(
///     seen,
///     vec![(UserId(1), 110, 1), (UserId(1), 150, -1), (UserId(1), 250, 1)]
/// );
/// ```
pub fn dormant_members<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    segment: &Dormant,
    expiry_at: &Expiry<'s>,
) -> VecCollection<'s, u64, (Sym, UserId), Diff> {
    let key = Sym::of(&segment.name);
    // Every event once as seen (`false`), and again while in the window (`true`).
    let active = recent(events.clone(), segment.within, expiry_at, |_| true);
    let seen = events.map(|event| (event.user, false));
    fold_by_key(
        seen.concat(active),
        "DormantSegment",
        |(seen, active): &mut (i64, i64), &recent: &bool, diff| {
            let counter = if recent { active } else { seen };
            *counter += diff as i64;
        },
        move |user, &(seen, active), rows| {
            if seen > 0 && active == 0 {
                rows.push((key, *user));
            }
        },
    )
}

/// `(user, tag(event))` for every event in the last `within` seconds ([`sliding_project`]):
/// only what a segment reads, so a window holds a few words per event rather than whole events,
/// and a user's events that enter or leave at one time travel as one update.
fn recent<'s, X>(
    events: VecCollection<'s, u64, Event, Diff>,
    within: i64,
    expiry_at: &Expiry<'s>,
    tag: impl Fn(&Event) -> X + 'static,
) -> VecCollection<'s, u64, (UserId, X), Diff>
where
    X: Ord + Clone + 'static,
{
    sliding_project(
        events,
        within,
        move |event| (event.time, (event.user, tag(&event))),
        expiry_at,
    )
}

/// Members of any segment, keyed by [`Segment::key`], with windows expiring as `expiry_at` says.
pub fn members<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    segment: &Segment,
    expiry_at: &Expiry<'s>,
) -> VecCollection<'s, u64, (Sym, UserId), Diff> {
    members_with_state(events, segment, expiry_at).0
}

/// [`members`], with the operator state that names users (for the forget audit).
pub fn members_with_state<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    segment: &Segment,
    expiry_at: &Expiry<'s>,
) -> (VecCollection<'s, u64, (Sym, UserId), Diff>, PercentileState) {
    match segment {
        Segment::Rule(rule) => (
            rule_members(events, rule, expiry_at),
            PercentileState::default(),
        ),
        Segment::Percentile(p) => percentile_members_with_state(events, p, expiry_at),
        Segment::Dormant(d) => (
            dormant_members(events, d, expiry_at),
            PercentileState::default(),
        ),
    }
}

/// Members of every segment in `segments`, in one collection keyed by [`Segment::key`].
pub fn all_members<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    segments: &[Segment],
    expiry_at: &Expiry<'s>,
) -> VecCollection<'s, u64, (Sym, UserId), Diff> {
    all_members_with_state(events, segments, expiry_at).0
}

/// [`all_members`], with the operator state that names users (for the forget audit).
pub fn all_members_with_state<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    segments: &[Segment],
    expiry_at: &Expiry<'s>,
) -> (VecCollection<'s, u64, (Sym, UserId), Diff>, PercentileState) {
    let mut state = PercentileState::default();
    let mut parts = Vec::new();
    for segment in segments {
        let (part, held) = members_with_state(events.clone(), segment, expiry_at);
        parts.push(part);
        state.extend(held);
    }
    (
        differential_dataflow::collection::concatenate(events.scope(), parts),
        state,
    )
}

/// Segment sizes: `(segment, number of members)` for every segment with at least one member.
/// Empty segments are absent; the output layer reports them as size 0.
pub fn segment_sizes<'s, T>(
    members: VecCollection<'s, T, (Sym, UserId), Diff>,
) -> VecCollection<'s, T, (Sym, u64), Diff>
where
    T: timely::progress::Timestamp
        + timely::order::TotalOrder
        + differential_dataflow::lattice::Lattice,
{
    members
        .map(|(segment, _user)| segment)
        .count_total()
        .map(|(segment, size)| (segment, size as u64))
}

/// The size to show under k-anonymity: `None` (suppressed) when smaller than `k`.
///
/// ```
/// use behave::views::segments::shown_size;
/// assert_eq!(shown_size(4, 5), None);
/// assert_eq!(shown_size(5, 5), Some(5));
/// assert_eq!(shown_size(0, 0), Some(0));
/// ```
pub fn shown_size(size: u64, k: u64) -> Option<u64> {
    (size >= k).then_some(size)
}
