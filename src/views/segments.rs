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
//! All segments of a spec share one per-user fold over their windows
//! ([`fold_passages`](super::fold::fold_passages)): an event is marked once with what it means
//! to each segment, enters every window at once and leaves each distinct `within` once, and the
//! fold keeps two counters per user and segment (events in the window, events ever or excluding
//! events), so an event costs a few counter updates rather than a pass through an arrangement.
//! Percentile thresholds and their members are kept by the incremental operators of
//! [`percentile`](super::percentile).
//!
//! Segment sizes are exact counts; k-anonymity suppression is an output concern ([`shown_size`]).

use super::fold::{fold_passages_audited, FoldKeys};
use super::percentile::{at_or_above, percentile_thresholds, PercentileState};
use super::window::{Expiry, Passage};
use super::Diff;
use crate::event::{Event, Sym, Time, UserId};
use differential_dataflow::operators::CountTotal;
use differential_dataflow::VecCollection;
use serde::{Deserialize, Serialize};
use std::rc::Rc;

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
    all_members(events, &[Segment::Rule(rule.clone())], expiry_at)
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
/// Each user's metric is a running count and sum over their windowed events
/// ([`fold_passages`](super::fold::fold_passages)). The threshold and the users at or above it
/// are kept by the operators of [`percentile`](super::percentile): a change costs the distinct
/// metrics the threshold crosses and the users whose membership changes, not a pass over all
/// users.
pub fn percentile_members<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    segment: &Percentile,
    expiry_at: &Expiry<'s>,
) -> VecCollection<'s, u64, (Sym, UserId), Diff> {
    all_members(events, &[Segment::Percentile(segment.clone())], expiry_at)
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
    all_members(events, &[Segment::Dormant(segment.clone())], expiry_at)
}

/// Members of any segment, keyed by [`Segment::key`], with windows expiring as `expiry_at` says.
pub fn members<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    segment: &Segment,
    expiry_at: &Expiry<'s>,
) -> VecCollection<'s, u64, (Sym, UserId), Diff> {
    all_members(events, std::slice::from_ref(segment), expiry_at)
}

/// Members of every segment in `segments`, in one collection keyed by [`Segment::key`].
pub fn all_members<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    segments: &[Segment],
    expiry_at: &Expiry<'s>,
) -> VecCollection<'s, u64, (Sym, UserId), Diff> {
    all_members_with_state(events, segments, expiry_at).0
}

/// The operator state of segments that names users, for the forget audit: each group's
/// per-user fold with its owed window exits, and the percentile operators' users by metric.
/// Every entry is live: entries leave when their count or state is back to zero.
#[derive(Clone, Default)]
pub struct SegmentState {
    folds: Vec<FoldKeys<UserId>>,
    percentile: PercentileState,
}

impl SegmentState {
    /// How many entries of the state name a user for which `user` holds.
    pub fn records_naming(&self, user: impl Fn(&UserId) -> bool) -> usize {
        let folds: usize = self.folds.iter().map(|fold| fold.count(&user)).sum();
        folds + self.percentile.records_naming(user)
    }
}

/// [`all_members`], with the operator state that names users (for the forget audit).
///
/// The segments share their windows and their per-user state: one per-user fold
/// ([`fold_passages`](super::fold::fold_passages)) takes each event once, owes one exit per
/// distinct `within` the event matters to, and keeps two counters per segment. Its changed rows
/// are the members of rule and dormant segments and the metrics of percentile segments, whose
/// thresholds and members the operators of [`percentile`](super::percentile) maintain.
pub fn all_members_with_state<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    segments: &[Segment],
    expiry_at: &Expiry<'s>,
) -> (VecCollection<'s, u64, (Sym, UserId), Diff>, SegmentState) {
    let mut state = SegmentState::default();
    let mut parts = Vec::new();
    // Up to 32 segments share one fold (a bit each in an event's mark).
    for group in segments.chunks(32) {
        let (part, fold, percentile) = group_members(events.clone(), group, expiry_at);
        parts.push(part);
        state.folds.push(fold);
        state.percentile.extend(percentile);
    }
    (
        differential_dataflow::collection::concatenate(events.scope(), parts),
        state,
    )
}

/// How a segment reads its two per-user counters.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Counters: matching events in the window, excluding events in the window.
    Rule { at_least: i64 },
    /// Counters: counted events in the window, the sum of their values.
    Percentile { metric: Metric },
    /// Counters: events ever, events in the window.
    Dormant,
}

/// What one event means to each segment of a group (bit `i` for segment `i`): whether it counts
/// (matches a rule, is counted by a percentile, is an event for a dormant segment), whether it
/// excludes (a rule's `without`), and its value (for value percentiles; else 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Mark {
    counts: u32,
    excludes: u32,
    value: i64,
}

/// The segments of a group, compiled: each one's kind and window, and the distinct windows.
#[derive(Clone)]
struct Plan {
    segments: Vec<Segment>,
    kinds: Vec<Kind>,
    /// Distinct `within`s, ascending.
    durations: Vec<i64>,
    /// Per window, the bit set of the segments that use it.
    users_of: Vec<u32>,
    /// Whether any segment reads values.
    values: bool,
}

impl Plan {
    fn new(segments: &[Segment]) -> Plan {
        let within = |segment: &Segment| match segment {
            Segment::Rule(r) => r.within,
            Segment::Percentile(p) => p.within,
            Segment::Dormant(d) => d.within,
        };
        let mut durations: Vec<i64> = segments.iter().map(within).collect();
        durations.sort_unstable();
        durations.dedup();
        let mut users_of = vec![0u32; durations.len()];
        for (i, segment) in segments.iter().enumerate() {
            if let Ok(w) = durations.binary_search(&within(segment)) {
                users_of[w] |= 1u32 << i;
            }
        }
        let kinds = segments
            .iter()
            .map(|segment| match segment {
                Segment::Rule(r) => Kind::Rule {
                    at_least: r.at_least.max(1) as i64,
                },
                Segment::Percentile(p) => Kind::Percentile { metric: p.metric },
                Segment::Dormant(_) => Kind::Dormant,
            })
            .collect();
        let values = segments
            .iter()
            .any(|segment| matches!(segment, Segment::Percentile(p) if p.metric == Metric::Value));
        Plan {
            segments: segments.to_vec(),
            kinds,
            durations,
            users_of,
            values,
        }
    }

    /// The event's time, user and mark; `None` if it matters to no segment.
    fn mark(&self, event: &Event) -> Option<(Time, UserId, Mark)> {
        let (mut counts, mut excludes) = (0u32, 0u32);
        for (i, segment) in self.segments.iter().enumerate() {
            let bit = 1u32 << i;
            match segment {
                Segment::Rule(rule) => {
                    if matches(rule, event) {
                        counts |= bit;
                    }
                    if rule.without == Some(event.kind) {
                        excludes |= bit;
                    }
                }
                Segment::Percentile(p) => {
                    if p.event.is_none_or(|kind| kind == event.kind) {
                        counts |= bit;
                    }
                }
                Segment::Dormant(_) => counts |= bit,
            }
        }
        if counts | excludes == 0 {
            return None;
        }
        let value = if self.values {
            event.value.map_or(0, |v| v.0)
        } else {
            0
        };
        let mark = Mark {
            counts,
            excludes,
            value,
        };
        Some((event.time, event.user, mark))
    }

    /// The windows (bit `w` for `durations[w]`) an event with `mark` matters to.
    fn windows(&self, mark: &Mark) -> u64 {
        let any = mark.counts | mark.excludes;
        self.users_of
            .iter()
            .enumerate()
            .filter(|(_, users)| *users & any != 0)
            .fold(0u64, |windows, (w, _)| windows | 1 << w)
    }

    /// Applies one passage of an event with `mark` to a user's counters (two per segment).
    fn update(&self, counters: &mut Counters, mark: &Mark, passage: Passage, diff: i64) {
        // Entering adds to every counter; leaving window `w` takes from the window counters of
        // the segments that use it (a dormant segment's first counter is "ever").
        let (sign, only) = match passage {
            Passage::Enter => (1, u32::MAX),
            Passage::Leave(w) => (-1, self.users_of.get(usize::from(w)).copied().unwrap_or(0)),
        };
        let d = sign * diff;
        for i in bits(mark.counts & only) {
            let c = counters.get_mut(i);
            match self.kinds[i] {
                Kind::Rule { .. } => c[0] += d,
                Kind::Percentile { .. } => {
                    c[0] += d;
                    c[1] += mark.value * d;
                }
                Kind::Dormant => {
                    if sign > 0 {
                        c[0] += d;
                    }
                    c[1] += d;
                }
            }
        }
        for i in bits(mark.excludes & only) {
            counters.get_mut(i)[1] += d;
        }
        counters.trim();
    }

    /// A user's rows from their counters: `(segment, 0)` for membership of a rule or dormant
    /// segment, `(segment, metric)` for a user ranked by a percentile segment.
    fn rows(&self, user: &UserId, counters: &Counters, rows: &mut Vec<(u32, i64, UserId)>) {
        for (i, kind) in self.kinds.iter().enumerate() {
            let c = counters.get(i);
            let row = match kind {
                Kind::Rule { at_least } => (c[0] >= *at_least && c[1] == 0).then_some(0),
                Kind::Percentile {
                    metric: Metric::Count,
                } => (c[0] > 0).then_some(c[0]),
                Kind::Percentile {
                    metric: Metric::Value,
                } => (c[0] > 0).then_some(c[1]),
                Kind::Dormant => (c[0] > 0 && c[1] == 0).then_some(0),
            };
            if let Some(metric) = row {
                rows.push((i as u32, metric, *user));
            }
        }
    }
}

/// Segments of a group whose counters a user's state holds inline, in the fold's map entry.
const INLINE: usize = 4;

/// A user's two counters per segment of a group (see [`Kind`]), all zero when the user has
/// nothing in any window: the first [`INLINE`] segments' in place (no allocation, and no
/// second cache line to fetch per update), the others' in a vector, empty when all zero.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Counters {
    inline: [[i64; 2]; INLINE],
    more: Vec<[i64; 2]>,
}

impl Counters {
    /// Segment `i`'s counters.
    fn get(&self, i: usize) -> [i64; 2] {
        match i.checked_sub(INLINE) {
            None => self.inline[i],
            Some(j) => self.more.get(j).copied().unwrap_or([0, 0]),
        }
    }

    /// Segment `i`'s counters, to change.
    fn get_mut(&mut self, i: usize) -> &mut [i64; 2] {
        match i.checked_sub(INLINE) {
            None => &mut self.inline[i],
            Some(j) => {
                if self.more.len() <= j {
                    self.more.resize(j + 1, [0, 0]);
                }
                &mut self.more[j]
            }
        }
    }

    /// Empties `more` when all its counters are zero, so that a user with nothing left equals
    /// the default (and leaves the fold).
    fn trim(&mut self) {
        if !self.more.is_empty() && self.more.iter().all(|c| *c == [0, 0]) {
            self.more = Vec::new();
        }
    }
}

/// The indices of the bits set in `mask`.
fn bits(mut mask: u32) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (mask != 0).then(|| {
            let i = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            i
        })
    })
}

/// Segment memberships `(segment, user)`.
type Members<'s> = VecCollection<'s, u64, (Sym, UserId), Diff>;

/// The members of up to 32 segments, from one per-user fold over their windows.
fn group_members<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    segments: &[Segment],
    expiry_at: &Expiry<'s>,
) -> (Members<'s>, FoldKeys<UserId>, PercentileState) {
    let plan = Rc::new(Plan::new(segments));
    let (marks, windows, update, rows) = (plan.clone(), plan.clone(), plan.clone(), plan.clone());
    let marked = events.clone().flat_map(move |event: Event| {
        marks
            .mark(&event)
            .map(|(time, user, mark)| (user, (time, mark)))
    });
    let (rows, fold) = fold_passages_audited(
        marked,
        &plan.durations,
        move |mark: &Mark| windows.windows(mark),
        expiry_at,
        "Segments",
        move |counters: &mut Counters, mark: &Mark, passage, diff| {
            update.update(counters, mark, passage, diff as i64)
        },
        move |user, counters: &Counters, out| rows.rows(user, counters, out),
    );
    let keys: Rc<Vec<Sym>> = Rc::new(segments.iter().map(Segment::key).collect());
    let mut parts = Vec::new();
    let mut state = PercentileState::default();
    if plan
        .kinds
        .iter()
        .any(|kind| !matches!(kind, Kind::Percentile { .. }))
    {
        let (plain, keys) = (plan.clone(), keys.clone());
        parts.push(rows.clone().flat_map(move |(i, _metric, user)| {
            let i = i as usize;
            (!matches!(plain.kinds[i], Kind::Percentile { .. })).then(|| (keys[i], user))
        }));
    }
    for (i, segment) in segments.iter().enumerate() {
        let Segment::Percentile(p) = segment else {
            continue;
        };
        let index = i as u32;
        let metrics = rows
            .clone()
            .flat_map(move |(j, metric, user)| (j == index).then_some((metric, user)));
        let thresholds = percentile_thresholds(metrics.clone(), keys[i], p.percentile);
        let (members, held) = at_or_above(metrics, thresholds, keys[i]);
        parts.push(members);
        state.extend(held);
    }
    (
        differential_dataflow::collection::concatenate(events.scope(), parts),
        fold,
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
