//! Execution: runs the views of a spec on timely workers (threads and processes), feeds them
//! the epochs the ingestor cuts, keeps each worker's part of the output, gathers the parts to
//! worker 0 as an exact snapshot at the as-of time, and audits the arrangements for records of
//! forgotten users. Idle workers go on merging their arrangements, so a forgotten user's
//! cancelled updates leave memory without waiting for more input ([`Runner::residue`]).

use crate::event::{Event, Sym, Time, UserId};
use crate::ingest::Epoch;
use crate::spec::Spec;
use crate::views::fold::FoldKeys;
use crate::views::history::{history_views, HistoryRow, HistoryViews};
use crate::views::recommend::{recommendations_with_state, RecommendParams, Recommendation};
use crate::views::similarity::{
    item_similarity_with_state, similarity_with_state, ItemSimilarityParams, Similar,
    SimilarityParams,
};
use crate::views::window::Expiry;
use crate::views::{self, segments, Diff, Engagement, RetentionSpec, Segment, Session};
use differential_dataflow::input::InputSession;
use differential_dataflow::operators::arrange::TraceAgent;
use differential_dataflow::trace::cursor::{cursor_list, Cursor};
use differential_dataflow::trace::implementations::ValSpine;
use differential_dataflow::trace::TraceReader;
use differential_dataflow::{AsCollection, VecCollection};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use timely::dataflow::operators::Exchange;
use timely::dataflow::ProbeHandle;
use timely::progress::frontier::AntichainRef;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Timely could not start its workers (e.g. a bad cluster configuration).
    #[error("cannot start workers: {0}")]
    Start(String),
    /// A worker thread panicked.
    #[error("worker failed: {0}")]
    Worker(String),
    /// The workers stopped taking input (one of them failed).
    #[error("the dataflow workers stopped before the input ended")]
    Disconnected,
}

/// One output row of any view; the snapshot is a set of these.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Row {
    /// A row of `sessions.csv`.
    Session(UserId, Session),
    /// A row of `engagement.csv`.
    Engagement(UserId, Engagement),
    /// A member of a segment (by the segment's interned name).
    Member(Sym, UserId),
    /// A cell of retention table number `.0`: `((cohort, k), retained)`, `k = 0` the cohort size.
    Retention(u32, (i64, i64), u64),
    /// A row of `similarity.csv`: a user and one of their top-k neighbours.
    Neighbour(UserId, Similar<UserId>),
    /// A row of `item_similarity.csv`: an item and one of its top-k neighbours.
    ItemNeighbour(Sym, Similar<Sym>),
    /// A row of `recommendations.csv`.
    Recommendation(UserId, Recommendation),
}

impl Row {
    /// The user the row is about, if it is a per-user row.
    pub fn user(&self) -> Option<UserId> {
        match self {
            Row::Session(user, _)
            | Row::Engagement(user, _)
            | Row::Member(_, user)
            | Row::Neighbour(user, _)
            | Row::Recommendation(user, _) => Some(*user),
            Row::Retention(..) | Row::ItemNeighbour(..) => None,
        }
    }

    /// Every user the row names: its subject and, for a similarity row, the neighbour.
    pub fn users(&self) -> [Option<UserId>; 2] {
        let neighbour = match self {
            Row::Neighbour(_, s) => Some(s.neighbour),
            _ => None,
        };
        [self.user(), neighbour]
    }
}

/// Which views to maintain, with their parameters (the part of a [`Spec`] the workers need).
/// The default maintains none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ViewConfig {
    /// Session gap in seconds, when the sessions view is on.
    pub sessions: Option<i64>,
    /// `(session gap, UTC offset)`, when the engagement view is on.
    pub engagement: Option<(i64, i64)>,
    /// Segments, in spec order.
    pub segments: Vec<Segment>,
    /// Retention tables `(name, definition)`, in spec order.
    pub retention: Vec<(String, RetentionSpec)>,
    /// User-user similarity, when on (its interactions also feed the two views below).
    pub similarity: Option<SimilarityParams>,
    /// Whether `similarity.csv` is written (the similarity may be on only for the views below).
    pub similarity_table: bool,
    /// Item-item similarity, when on (needs `similarity`).
    pub item_similarity: Option<ItemSimilarityParams>,
    /// Recommendations, when on (needs `similarity`).
    pub recommendations: Option<RecommendParams>,
    /// Also keep every change of every view, for a change log (`--changes`); windows then
    /// expire at the exact second rather than at the next epoch, so the log shows when each
    /// change happened (the snapshot is the same either way).
    pub record_changes: bool,
}

impl ViewConfig {
    /// The views a spec asks for.
    pub fn from_spec(spec: &Spec) -> ViewConfig {
        ViewConfig {
            sessions: spec.sessions.as_ref().map(|s| s.gap.0),
            engagement: spec
                .engagement
                .as_ref()
                .map(|e| (spec.session_gap(), e.utc_offset.0)),
            segments: spec.segment.iter().map(|s| s.to_view()).collect(),
            retention: spec
                .retention
                .iter()
                .map(|r| (r.name.clone(), r.to_view()))
                .collect(),
            similarity: spec.similarity.as_ref().map(|s| s.to_view()),
            similarity_table: spec.similarity.is_some(),
            item_similarity: spec.item_similarity.as_ref().map(|i| ItemSimilarityParams {
                k: i.k,
                max_user_items: i.max_user_items,
            }),
            recommendations: spec.recommend_params(),
            record_changes: false,
        }
    }

    /// Only sessions and engagement, with the given gap (and UTC offset 0 for active days).
    pub fn sessions_and_engagement(gap: i64) -> ViewConfig {
        ViewConfig {
            sessions: Some(gap),
            engagement: Some((gap, 0)),
            segments: Vec::new(),
            retention: Vec::new(),
            similarity: None,
            similarity_table: false,
            item_similarity: None,
            recommendations: None,
            record_changes: false,
        }
    }
}

/// A trace kept by the runtime for compaction and the forget audit.
pub trait AuditedTrace {
    /// The arrangement's name.
    fn name(&self) -> &str;
    /// Allows the trace to compact up to `time`.
    fn compact_to(&mut self, time: u64);
    /// How many physical updates the trace still holds for any of `users` (sorted).
    fn records_of(&mut self, users: &[UserId]) -> Residue;
    /// How many batches with updates the trace holds (idle merging brings it down to one).
    fn batches(&self) -> usize;
}

/// What a trace still holds of some users.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Residue {
    /// Records `(user, value)` whose updates do not cancel: data the arrangement still holds.
    pub live: usize,
    /// Physical updates present, cancelled ones included (they leave when batches merge).
    pub physical: usize,
}

impl std::ops::Add for Residue {
    type Output = Residue;
    fn add(self, other: Residue) -> Residue {
        Residue {
            live: self.live + other.live,
            physical: self.physical + other.physical,
        }
    }
}

struct UserKeyed<V: differential_dataflow::ExchangeData> {
    name: String,
    trace: TraceAgent<ValSpine<UserId, V, u64, Diff>>,
}

impl<V: differential_dataflow::ExchangeData> AuditedTrace for UserKeyed<V> {
    fn name(&self) -> &str {
        &self.name
    }

    fn compact_to(&mut self, time: u64) {
        let frontier = [time];
        self.trace
            .set_logical_compaction(AntichainRef::new(&frontier));
        self.trace
            .set_physical_compaction(AntichainRef::new(&frontier));
    }

    fn records_of(&mut self, users: &[UserId]) -> Residue {
        let Some(batches) = self.trace.batches_through(AntichainRef::new(&[])) else {
            return Residue::default();
        };
        let (mut cursor, storage) = cursor_list(batches);
        let mut residue = Residue::default();
        for user in users {
            cursor.seek_key(&storage, user);
            if cursor.get_key(&storage) == Some(user) {
                while cursor.val_valid(&storage) {
                    let mut sum: Diff = 0;
                    cursor.map_times(&storage, |_, diff| {
                        residue.physical += 1;
                        sum += *diff;
                    });
                    residue.live += usize::from(sum != 0);
                    cursor.step_val(&storage);
                }
            }
        }
        residue
    }

    fn batches(&self) -> usize {
        let mut batches = 0;
        self.trace
            .map_spans(|span| batches += usize::from(span.has_updates()));
        batches
    }
}

/// Operator state that can hold user ids (the similarity operators' maps), audited like a
/// trace: it keeps no history (entries leave the moment their count reaches zero), so there is
/// nothing to compact or merge, and every entry found is live.
struct InOperator {
    name: String,
    count: UserCounter,
}

/// Counts what a piece of operator state holds of some users (sorted ids).
type UserCounter = Box<dyn Fn(&[UserId]) -> usize>;

impl InOperator {
    /// The audit of a fold's state: the users among its keys.
    fn fold(name: String, held: FoldKeys<UserId>) -> Box<dyn AuditedTrace> {
        Box::new(InOperator {
            name,
            count: Box::new(move |users| held.count(|u| users.binary_search(u).is_ok())),
        })
    }
}

impl AuditedTrace for InOperator {
    fn name(&self) -> &str {
        &self.name
    }

    fn compact_to(&mut self, _time: u64) {}

    fn records_of(&mut self, users: &[UserId]) -> Residue {
        let mut sorted = users.to_vec();
        sorted.sort_unstable();
        let found = (self.count)(&sorted);
        Residue {
            live: found,
            physical: found,
        }
    }

    fn batches(&self) -> usize {
        0
    }
}

/// The event type of the purge pulse: events the runtime inserts after the snapshot time and
/// retracts again, so that every arrangement receives one more non-empty batch and idle merging
/// rewrites it under the compaction frontier, which drops the cancelled updates of forgotten
/// users physically. They never reach a snapshot (their times are after the as-of time).
pub const PURGE_EVENT: &str = "behave.purge";

/// Pulse users per worker: enough that every worker's shard of every user-keyed arrangement
/// receives at least one, whatever the routing hash does (a worker is missed with
/// probability about `peers · e⁻⁶⁴`).
const PULSE_USERS_PER_WORKER: u64 = 64;

/// The pulse events worker `index` of `peers` inserts at `time`: reserved pseudonyms at the
/// top of the id space (an HMAC output lands there with probability 2⁻⁵²).
fn pulse(index: usize, peers: usize, time: u64) -> impl Iterator<Item = Event> {
    (0..PULSE_USERS_PER_WORKER).map(move |k| {
        let slot = k * peers as u64 + index as u64;
        Event::new(UserId(u64::MAX - slot), time as i64, PURGE_EVENT)
    })
}

/// The purge pulse's users with `value`, for arrangements the pulse events would not reach
/// through their view (pulse users belong to no segment and have no neighbour), so that every
/// audited arrangement gets the batch that rewrites it. `pulse` is the runtime's own input of
/// pulse users, so that finding them costs no pass over the events.
fn pulse_users<'s, V: differential_dataflow::ExchangeData>(
    pulse: VecCollection<'s, u64, UserId, Diff>,
    value: V,
) -> VecCollection<'s, u64, (UserId, V), Diff> {
    pulse.map(move |user| (user, value.clone()))
}

/// Builds the views of `config` over `events`, windows expiring as `expiry_at` says: the
/// gathered output rows and the traces to audit. `pulse` holds the users of the purge pulse
/// (whose events are also in `events`), for the arrangements their events do not reach.
pub fn build_views<'s>(
    events: VecCollection<'s, u64, Event, Diff>,
    pulse: VecCollection<'s, u64, UserId, Diff>,
    expiry_at: &Expiry<'s>,
    config: &ViewConfig,
) -> (
    VecCollection<'s, u64, Row, Diff>,
    Vec<Box<dyn AuditedTrace>>,
) {
    let mut audited: Vec<Box<dyn AuditedTrace>> = Vec::new();
    let mut outputs = Vec::new();
    let history = HistoryViews {
        sessions: config.sessions,
        engagement: config.engagement,
    };
    if history != HistoryViews::default() {
        let (rows, held) = history_views(events.clone(), history);
        audited.push(InOperator::fold("user_histories".into(), held));
        outputs.push(rows.map(|(user, row)| match row {
            HistoryRow::Session(s) => Row::Session(user, s),
            HistoryRow::Engagement(e) => Row::Engagement(user, e),
        }));
    }
    if !config.segments.is_empty() {
        let (members, state) =
            segments::all_members_with_state(events.clone(), &config.segments, expiry_at);
        audited.push(Box::new(InOperator {
            name: "segment_operators".into(),
            count: Box::new(move |users| state.records_naming(|u| users.binary_search(u).is_ok())),
        }));
        let members = members
            .map(|(segment, user)| (user, segment))
            .concat(pulse_users(pulse.clone(), Sym::of(PURGE_EVENT)))
            .arrange_by_key_named("SegmentMembers");
        audited.push(Box::new(UserKeyed {
            name: "segment_members".into(),
            trace: members.trace.clone(),
        }));
        outputs.push(members.as_collection(|u: &UserId, s: &Sym| Row::Member(*s, *u)));
    }
    for (table, (name, spec)) in config.retention.iter().enumerate() {
        let table = table as u32;
        let (counts, held) = views::retention::retention_with_state(events.clone(), spec);
        audited.push(InOperator::fold(format!("retention_{name}"), held));
        outputs.push(counts.map(move |(cell, retained)| Row::Retention(table, cell, retained)));
    }
    if let Some(params) = &config.similarity {
        let (neighbours, state) = similarity_with_state(events.clone(), params);
        audited.push(Box::new(InOperator {
            name: "similarity_operators".into(),
            count: Box::new(move |users| {
                state.records_naming(|_item| false, |u| users.binary_search(u).is_ok())
            }),
        }));
        if config.similarity_table {
            let placeholder = Similar {
                neighbour: UserId(0),
                overlap: 0,
                size: 0,
                neighbour_size: 0,
            };
            let arranged = neighbours
                .clone()
                .concat(pulse_users(pulse.clone(), placeholder))
                .arrange_by_key_named("Similarity");
            audited.push(Box::new(UserKeyed {
                name: "similarity".into(),
                trace: arranged.trace.clone(),
            }));
            outputs.push(
                arranged.as_collection(|u: &UserId, s: &Similar<UserId>| Row::Neighbour(*u, *s)),
            );
        }
        if let Some(items) = &config.item_similarity {
            let (neighbours, state) = item_similarity_with_state(events.clone(), params, items);
            audited.push(Box::new(InOperator {
                name: "item_similarity_operators".into(),
                count: Box::new(move |users| {
                    state.records_naming(|u| users.binary_search(u).is_ok(), |_item| false)
                }),
            }));
            outputs.push(neighbours.map(|(item, s)| Row::ItemNeighbour(item, s)));
        }
        if let Some(recommend) = &config.recommendations {
            let (recommended, state) = recommendations_with_state(
                events.clone(),
                neighbours,
                params,
                recommend,
                expiry_at,
            );
            audited.push(Box::new(InOperator {
                name: "recommendation_inputs".into(),
                count: Box::new(move |users| {
                    state.records_naming(|u| users.binary_search(u).is_ok())
                }),
            }));
            let arranged = recommended.arrange_by_key_named("Recommendations");
            audited.push(Box::new(UserKeyed {
                name: "recommendations".into(),
                trace: arranged.trace.clone(),
            }));
            outputs.push(
                arranged
                    .as_collection(|u: &UserId, r: &Recommendation| Row::Recommendation(*u, *r)),
            );
        }
    }
    let rows = differential_dataflow::collection::concatenate(events.scope(), outputs);
    (rows, audited)
}

/// A message from the driver to one worker.
enum Msg {
    /// Updates at `time`; `sync` asks for an acknowledgement once the views reflect them.
    Epoch {
        time: u64,
        updates: Vec<(Event, Diff)>,
        sync: bool,
    },
    /// The stream ended; take the snapshot at `as_of` and audit for `forgotten`.
    End {
        as_of: u64,
        forgotten: Arc<Vec<UserId>>,
    },
    /// Reply with what the audited traces hold of `users` (sorted) now, compacting nothing.
    Residue {
        users: Arc<Vec<UserId>>,
        reply: SyncSender<Residue>,
    },
}

/// What the arrangement audit found on one worker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Audit {
    /// Arrangements scanned.
    pub traces: usize,
    /// Forgotten users looked for.
    pub users: usize,
    /// Records of forgotten users whose updates do not cancel: data still held (0 is the
    /// promise, and a run fails otherwise).
    pub residual_records: usize,
    /// Physical updates of forgotten users still present, cancelled ones included: the bytes of
    /// an insertion and its retraction at two times stay until a merge rewrites their batch,
    /// which the purge pulse at the end of a run forces (0 is the promise, as for
    /// `residual_records`).
    pub physical_records: usize,
}

/// The rows of the final snapshot with their multiplicities, gathered on worker 0.
pub type Snapshot = BTreeMap<Row, Diff>;

/// Changes `(row, time, diff)` of every view, consolidated and sorted by time.
pub type Changes = Vec<(Row, u64, Diff)>;

/// What a worker returns.
struct WorkerResult {
    snapshot: Option<Snapshot>,
    changes: Option<Changes>,
    audit: Audit,
}

/// How many epochs a worker lets its dataflow fall behind the input before waiting.
const MAX_LAG: usize = 4;

/// Merge effort (in updates) per step of an arrangement not yet in one batch, while the worker
/// is idle ([`idle_step`]): enough to rewrite large batches in a few steps.
const IDLE_EFFORT: usize = 1_000;

/// Merge effort per step while the worker processes epochs: enough to keep merges moving
/// without slowing the epoch (a forget) that the worker, or a peer waiting on it, is on.
const BUSY_EFFORT: usize = 10;

thread_local! {
    /// Whether this worker thread steps only to merge (see [`idle_step`]).
    static IDLE: Cell<bool> = const { Cell::new(false) };
}

/// One step of a worker with nothing else to do, merging at [`IDLE_EFFORT`].
fn idle_step(worker: &mut timely::worker::Worker) {
    IDLE.with(|idle| idle.set(true));
    worker.step();
    IDLE.with(|idle| idle.set(false));
}

/// The arrangements' merging: like differential's `idle_merge_effort`, an arrangement that
/// holds more than one non-empty batch merges on each step, at [`IDLE_EFFORT`] when the
/// worker is idle and at [`BUSY_EFFORT`] otherwise.
fn exert_logic() -> differential_dataflow::trace::ExertionLogic {
    Arc::new(|batches| {
        let effort = || {
            Some(if IDLE.with(Cell::get) {
                IDLE_EFFORT
            } else {
                BUSY_EFFORT
            })
        };
        let mut non_empty = 0;
        for (_level, count, length) in batches {
            if *count > 1 {
                return effort();
            }
            if *length > 0 {
                non_empty += 1;
            }
            if non_empty > 1 {
                return effort();
            }
        }
        None
    })
}

/// How long a worker waits for a message before it counts as idle: epochs of a replay arrive
/// closer together than this, so idle merging never competes with ingestion for cores.
const IDLE_AFTER: Duration = Duration::from_millis(10);

/// How long an idle worker keeps stepping so that idle merging can rewrite the batches that
/// still hold retracted records, before it blocks until the next message.
const IDLE_MERGE: Duration = Duration::from_secs(1);

/// The next message for the worker, `None` once the runner is gone. Once no message has come
/// for [`IDLE_AFTER`], and while an audited trace still holds more than one batch, the worker
/// keeps stepping until a message comes (for at most [`IDLE_MERGE`]): idle merging then
/// rewrites the batches under the compaction frontier, so that a forgotten user's cancelled
/// updates leave memory without waiting for more input.
fn next_message(
    worker: &mut timely::worker::Worker,
    receiver: &Receiver<Msg>,
    audited: &[Box<dyn AuditedTrace>],
) -> Option<Msg> {
    match receiver.recv_timeout(IDLE_AFTER) {
        Ok(message) => return Some(message),
        Err(RecvTimeoutError::Disconnected) => return None,
        Err(RecvTimeoutError::Timeout) => {}
    }
    let idle_since = Instant::now();
    while idle_since.elapsed() < IDLE_MERGE && audited.iter().any(|t| t.batches() > 1) {
        match receiver.try_recv() {
            Ok(message) => return Some(message),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => idle_step(worker),
        }
    }
    receiver.recv().ok()
}

/// Folds the output updates a worker's views produce into its part of the snapshot: those at
/// or before the latest input time join it, later ones (from windowed views, which schedule
/// retractions ahead) wait until the input reaches their time; optionally logs every change.
/// Each worker keeps the rows of its own keys; the parts meet on worker 0 only at the end
/// ([`collect_on_first`]), so no single worker handles every output change of the run.
#[derive(Default)]
struct Gather {
    input_time: u64,
    current: Rows,
    future: BTreeMap<u64, Vec<(Row, Diff)>>,
    changes: Option<Changes>,
}

impl Gather {
    fn absorb(&mut self, updates: &[(Row, u64, Diff)]) {
        for (row, time, diff) in updates {
            if let Some(changes) = &mut self.changes {
                changes.push((row.clone(), *time, *diff));
            }
            if *time <= self.input_time {
                fold(&mut self.current, row.clone(), *diff);
            } else {
                self.future
                    .entry(*time)
                    .or_default()
                    .push((row.clone(), *diff));
            }
        }
    }

    /// The input reached `time`: updates scheduled at or before it join the snapshot.
    fn advance(&mut self, time: u64) {
        self.input_time = self.input_time.max(time);
        while let Some(entry) = self.future.first_entry() {
            if *entry.key() > self.input_time {
                break;
            }
            for (row, diff) in entry.remove() {
                fold(&mut self.current, row, diff);
            }
        }
    }

    fn finish(mut self, as_of: u64) -> (Snapshot, Option<Changes>) {
        self.advance(as_of);
        let changes = self.changes.map(|mut changes| {
            changes.retain(|(_, time, _)| *time <= as_of);
            consolidate_changes(changes)
        });
        (self.current.into_iter().collect(), changes)
    }
}

/// Sorts changes by time (then row) and sums the diffs of equal `(row, time)`, dropping zeros.
fn consolidate_changes(mut changes: Changes) -> Changes {
    changes.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    let mut consolidated: Vec<(Row, u64, Diff)> = Vec::with_capacity(changes.len());
    for (row, time, diff) in changes {
        match consolidated.last_mut() {
            Some(last) if last.0 == row && last.1 == time => last.2 += diff,
            _ => consolidated.push((row, time, diff)),
        }
    }
    consolidated.retain(|(_, _, diff)| *diff != 0);
    consolidated
}

/// A piece of a worker's final output on its way to worker 0.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Piece {
    /// A snapshot row (its multiplicity is the update's diff).
    Row(Row),
    /// A change of the change log: the row and its time (the diff is the update's).
    Change(Row, u64),
}

/// Steps the worker until `pending` turns false, parking its thread (up to 1 ms at a time)
/// whenever it has nothing to do instead of spinning. A worker waiting for its peers' progress
/// would otherwise busy-loop on the core a peer needs whenever workers outnumber free cores;
/// a message or activation for it wakes it at once.
fn wait_while(worker: &mut timely::worker::Worker, mut pending: impl FnMut() -> bool) {
    while pending() {
        worker.step_or_park(Some(Duration::from_millis(1)));
    }
}

/// Sends every worker's part of the snapshot (and change log) to worker 0, in a one-off
/// dataflow that every worker builds at the end of the run, and returns the whole on worker 0
/// (empty elsewhere). This is the only point where output crosses workers.
fn collect_on_first(
    worker: &mut timely::worker::Worker,
    snapshot: Snapshot,
    changes: Option<Changes>,
) -> (Snapshot, Option<Changes>) {
    let logging = changes.is_some();
    let received: Rc<RefCell<Vec<(Piece, Diff)>>> = Rc::default();
    let sink = received.clone();
    let mut input: InputSession<u64, Piece, Diff> = InputSession::new();
    let probe = ProbeHandle::new();
    worker.dataflow::<u64, _, _>(|scope| {
        input
            .to_collection(scope)
            .inner
            .exchange(|_| 0)
            .as_collection()
            .inspect_batch(move |_time, updates| {
                let mut sink = sink.borrow_mut();
                sink.extend(
                    updates
                        .iter()
                        .map(|(piece, _, diff)| (piece.clone(), *diff)),
                );
            })
            .probe_with(&probe);
    });
    for (row, diff) in snapshot {
        input.update(Piece::Row(row), diff);
    }
    for (row, time, diff) in changes.into_iter().flatten() {
        input.update(Piece::Change(row, time), diff);
    }
    input.advance_to(1);
    input.flush();
    wait_while(worker, || probe.less_than(&1));
    let mut whole = Rows::default();
    let mut log = Vec::new();
    for (piece, diff) in received.take() {
        match piece {
            Piece::Row(row) => fold(&mut whole, row, diff),
            Piece::Change(row, time) => log.push((row, time, diff)),
        }
    }
    (
        whole.into_iter().collect(),
        logging.then(|| consolidate_changes(log)),
    )
}

/// Output rows with their multiplicities. Every output change of every view is folded in here,
/// so the map hashes with foldhash rather than the std default (SipHash).
type Rows = HashMap<Row, Diff, foldhash::fast::RandomState>;

fn fold(map: &mut Rows, row: Row, diff: Diff) {
    let entry = map.entry(row);
    match entry {
        std::collections::hash_map::Entry::Occupied(mut o) => {
            *o.get_mut() += diff;
            if *o.get() == 0 {
                o.remove();
            }
        }
        std::collections::hash_map::Entry::Vacant(v) => {
            v.insert(diff);
        }
    }
}

/// A worker's inputs: the events, and the users of the purge pulse (see [`pulse_users`]),
/// always at the same time.
struct Inputs {
    events: InputSession<u64, Event, Diff>,
    pulse: InputSession<u64, UserId, Diff>,
}

impl Inputs {
    fn new() -> Inputs {
        Inputs {
            events: InputSession::new(),
            pulse: InputSession::new(),
        }
    }

    fn time(&self) -> &u64 {
        self.events.time()
    }

    fn advance_to(&mut self, time: u64) {
        self.events.advance_to(time);
        self.pulse.advance_to(time);
    }

    fn flush(&mut self) {
        self.events.flush();
        self.pulse.flush();
    }

    /// Inserts (`diff` 1) or retracts (-1) the pulse of worker `index` of `peers`, at the
    /// current time.
    fn pulse(&mut self, index: usize, peers: usize, diff: Diff) {
        let time = *self.time();
        for event in pulse(index, peers, time) {
            self.pulse.update(event.user, diff);
            self.events.update(event, diff);
        }
    }
}

fn run_worker(
    worker: &mut timely::worker::Worker,
    config: &ViewConfig,
    receiver: Receiver<Msg>,
    acks: SyncSender<usize>,
) -> WorkerResult {
    let index = worker.index();
    let gather = Rc::new(RefCell::new(Gather {
        changes: config.record_changes.then(Vec::new),
        ..Gather::default()
    }));
    let mut input = Inputs::new();
    // One tick per epoch and at the as-of time: the times windows are exact at.
    let mut ticks: timely::dataflow::operators::vec::input::Handle<u64, ()> = Default::default();
    let probe = ProbeHandle::new();
    let mut audited = worker.dataflow::<u64, _, _>(|scope| {
        let events = input.events.to_collection(scope);
        let pulse = input.pulse.to_collection(scope);
        // A change log records each change at the second it happens; otherwise windows only
        // need to be exact at the epochs, which costs far fewer logical times.
        let clock = ticks.to_stream(scope);
        let expiry_at = if config.record_changes {
            Expiry::Exact
        } else {
            Expiry::Ticks(clock)
        };
        let (rows, audited) = build_views(events, pulse, &expiry_at, config);
        let sink = gather.clone();
        rows.inspect_batch(move |_time, updates| sink.borrow_mut().absorb(updates))
            .probe_with(&probe);
        audited
    });
    let mut recent: std::collections::VecDeque<u64> = Default::default();
    let mut result = WorkerResult {
        snapshot: None,
        changes: None,
        audit: Audit::default(),
    };
    while let Some(message) = next_message(worker, &receiver, &audited) {
        match message {
            Msg::Epoch {
                time,
                updates,
                sync,
            } => {
                if time > *input.time() {
                    input.advance_to(time);
                    ticks.advance_to(time);
                }
                for (event, diff) in updates {
                    input.events.update(event, diff);
                }
                ticks.send(());
                input.advance_to(time + 1);
                ticks.advance_to(time + 1);
                input.flush();
                gather.borrow_mut().advance(time);
                // Nothing reads the audited traces at a time before the input's: the batch of
                // this epoch (a forget's retractions) may merge with the older ones, cancelling
                // what it retracts, as soon as it is built.
                for trace in audited.iter_mut() {
                    trace.compact_to(time + 1);
                }
                recent.push_back(time);
                if sync {
                    wait_while(worker, || probe.less_than(input.time()));
                    recent.clear();
                    let _ = acks.send(index);
                } else {
                    worker.step();
                    if recent.len() > MAX_LAG {
                        let behind = recent.pop_front().unwrap_or(0);
                        wait_while(worker, || probe.less_than(&(behind + 1)));
                    }
                }
            }
            Msg::End { as_of, forgotten } => {
                if as_of >= *ticks.time() {
                    ticks.advance_to(as_of);
                    ticks.send(());
                }
                if as_of + 1 > *input.time() {
                    input.advance_to(as_of + 1);
                    ticks.advance_to(as_of + 1);
                }
                input.flush();
                gather.borrow_mut().advance(as_of);
                wait_while(worker, || probe.less_than(input.time()));
                let taken = std::mem::take(&mut *gather.borrow_mut());
                let (part, part_changes) = taken.finish(as_of);
                let (snapshot, changes) = collect_on_first(worker, part, part_changes);
                if index == 0 {
                    result.snapshot = Some(snapshot);
                    result.changes = changes;
                }
                // After the snapshot: the purge pulse, one epoch in and one out.
                let start = *input.time();
                let peers = worker.peers();
                input.pulse(index, peers, 1);
                input.advance_to(start + 1);
                input.pulse(index, peers, -1);
                input.advance_to(start + 2);
                ticks.advance_to(start + 2);
                input.flush();
                wait_while(worker, || probe.less_than(input.time()));
                result.audit = audit(worker, &mut audited, start + 2, &forgotten);
                let _ = acks.send(index);
            }
            Msg::Residue { users, reply } => {
                let _ = reply.send(residue_of(&mut audited, &users));
            }
        }
    }
    result
}

/// What `traces` hold of `users` (sorted), summed.
fn residue_of(traces: &mut [Box<dyn AuditedTrace>], users: &[UserId]) -> Residue {
    traces
        .iter_mut()
        .map(|trace| trace.records_of(users))
        .fold(Residue::default(), |sum, found| sum + found)
}

/// Compacts every audited trace to `time`, lets idle merging bring each down to one batch
/// (rewritten under the compaction frontier, which drops cancelled updates), and counts what
/// remains of the forgotten users.
fn audit(
    worker: &mut timely::worker::Worker,
    traces: &mut [Box<dyn AuditedTrace>],
    time: u64,
    forgotten: &[UserId],
) -> Audit {
    for trace in traces.iter_mut() {
        trace.compact_to(time);
    }
    // Idle merging works while a trace holds more than one batch; the pulse guarantees that
    // each one does at this point. The bound only guards against a merge that never ends.
    let mut steps = 0u64;
    while traces.iter().any(|t| t.batches() > 1) && steps < 10_000_000 {
        idle_step(worker);
        steps += 1;
    }
    let residue = residue_of(traces, forgotten);
    Audit {
        traces: traces.len(),
        users: forgotten.len(),
        residual_records: residue.live,
        physical_records: residue.physical,
    }
}

/// The process index of the peer a panic of one of timely's communication threads is about,
/// given the panicking thread's name and the panic message.
///
/// Timely names its network threads `timely:send-I` and `timely:recv-I` (I the remote process)
/// and panics in them with a message starting `timely communication error` when a peer's
/// connection closes or fails. The worker threads of this process then panic on their next
/// step (`MergeQueue poisoned`) or, while they wait for input, never notice at all: a binary
/// should turn such a panic into an exit naming the peer (the `behave` binary does).
pub fn lost_peer(thread: &str, message: &str) -> Option<usize> {
    if !message.starts_with("timely communication error") {
        return None;
    }
    thread
        .strip_prefix("timely:recv-")
        .or_else(|| thread.strip_prefix("timely:send-"))
        .and_then(|index| index.parse().ok())
}

/// The cluster shape: threads per process, and the processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// Worker threads per process.
    pub threads: usize,
    /// This process's index.
    pub process: usize,
    /// Addresses (`host:port`) of all processes, in process order; empty for one process.
    pub addresses: Vec<String>,
}

impl Cluster {
    /// One process with `threads` workers.
    pub fn local(threads: usize) -> Cluster {
        Cluster {
            threads: threads.max(1),
            process: 0,
            addresses: Vec::new(),
        }
    }

    /// Total workers.
    pub fn peers(&self) -> usize {
        self.threads * self.addresses.len().max(1)
    }

    /// Global indices of this process's workers.
    pub fn local_workers(&self) -> std::ops::Range<usize> {
        self.process * self.threads..(self.process + 1) * self.threads
    }

    fn timely_config(&self) -> timely::Config {
        let communication = if self.addresses.len() > 1 {
            timely::CommunicationConfig::Cluster {
                threads: self.threads,
                process: self.process,
                addresses: self.addresses.clone(),
                report: false,
                zerocopy: false,
            }
        } else {
            timely::CommunicationConfig::Process(self.threads)
        };
        let mut worker = timely::WorkerConfig::default();
        worker.set::<differential_dataflow::trace::ExertionLogic>(
            "differential/default_exert_logic".to_string(),
            exert_logic(),
        );
        timely::Config {
            communication,
            worker,
        }
    }
}

/// Running dataflow workers fed by this thread: send epochs, optionally wait until the views
/// reflect them, and finish with a snapshot.
pub struct Runner {
    senders: Vec<SyncSender<Msg>>,
    acks: Receiver<usize>,
    guards: timely::communication::WorkerGuards<WorkerResult>,
    cluster: Cluster,
}

/// The end of a run: the snapshot (on process 0) and the forget audit of this process.
pub struct Finished {
    /// The snapshot at the as-of time; `None` on processes other than 0.
    pub snapshot: Option<Snapshot>,
    /// Every change `(row, time, ±diff)` up to the as-of time, consolidated and sorted by time,
    /// when [`ViewConfig::record_changes`] is set (process 0 only).
    pub changes: Option<Changes>,
    /// The audit, summed over this process's workers.
    pub audit: Audit,
}

impl Runner {
    /// Starts the workers of this process. In a cluster this returns once all peers connected.
    pub fn start(cluster: Cluster, views: ViewConfig) -> Result<Runner, RuntimeError> {
        let mut senders = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..cluster.threads {
            let (sender, receiver) = sync_channel(2 * MAX_LAG);
            senders.push(sender);
            receivers.push(Some(receiver));
        }
        let receivers = Arc::new(Mutex::new(receivers));
        let (ack_sender, acks) = sync_channel(cluster.threads);
        let threads = cluster.threads;
        let views = Arc::new(views);
        let guards = timely::execute(cluster.timely_config(), move |worker| {
            let local = worker.index() % threads;
            let receiver = receivers
                .lock()
                .map(|mut r| r[local].take())
                .ok()
                .flatten()
                .expect("each worker takes its own receiver once");
            run_worker(worker, &views, receiver, ack_sender.clone())
        })
        .map_err(RuntimeError::Start)?;
        Ok(Runner {
            senders,
            acks,
            guards,
            cluster,
        })
    }

    /// The cluster this runner is part of.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    fn send_epoch(&self, epoch: Epoch, sync: bool) -> Result<(), RuntimeError> {
        let mut shards = epoch.shards;
        for (local, global) in self.cluster.local_workers().enumerate() {
            let updates = shards
                .get_mut(global)
                .map(std::mem::take)
                .unwrap_or_default();
            self.senders[local]
                .send(Msg::Epoch {
                    time: epoch.time,
                    updates,
                    sync,
                })
                .map_err(|_| RuntimeError::Disconnected)?;
        }
        if sync {
            self.wait()?;
        }
        Ok(())
    }

    /// Hands an epoch to the workers without waiting.
    pub fn send(&self, epoch: Epoch) -> Result<(), RuntimeError> {
        self.send_epoch(epoch, false)
    }

    /// Hands an epoch to the workers and waits until every view reflects it.
    pub fn sync(&self, epoch: Epoch) -> Result<(), RuntimeError> {
        self.send_epoch(epoch, true)
    }

    fn wait(&self) -> Result<(), RuntimeError> {
        for _ in 0..self.cluster.threads {
            self.acks.recv().map_err(|_| RuntimeError::Disconnected)?;
        }
        Ok(())
    }

    /// What this process's workers hold of `users` now, in the audited arrangements and
    /// operator state, without compacting or merging anything: `live` records (updates that do
    /// not cancel) and `physical` updates (cancelled ones included). After a forget, `live` is
    /// zero at once; `physical` falls to zero as idle merging rewrites the batches, which
    /// workers do while no epoch waits, without needing more input.
    pub fn residue(&self, users: &[UserId]) -> Result<Residue, RuntimeError> {
        let mut sorted = users.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let users = Arc::new(sorted);
        let (reply, replies) = sync_channel(self.senders.len());
        for sender in &self.senders {
            sender
                .send(Msg::Residue {
                    users: users.clone(),
                    reply: reply.clone(),
                })
                .map_err(|_| RuntimeError::Disconnected)?;
        }
        let mut residue = Residue::default();
        for _ in 0..self.senders.len() {
            residue = residue + replies.recv().map_err(|_| RuntimeError::Disconnected)?;
        }
        Ok(residue)
    }

    /// Ends the stream at `as_of`, audits for `forgotten` users, and returns the snapshot.
    pub fn finish(self, as_of: Time, forgotten: Vec<UserId>) -> Result<Finished, RuntimeError> {
        let forgotten = Arc::new(forgotten);
        let as_of = as_of.max(0) as u64;
        for sender in &self.senders {
            sender
                .send(Msg::End {
                    as_of,
                    forgotten: forgotten.clone(),
                })
                .map_err(|_| RuntimeError::Disconnected)?;
        }
        self.wait()?;
        drop(self.senders);
        let mut finished = Finished {
            snapshot: None,
            changes: None,
            audit: Audit::default(),
        };
        for result in self.guards.join() {
            let result = result.map_err(RuntimeError::Worker)?;
            finished.audit.traces += result.audit.traces;
            finished.audit.users = result.audit.users;
            finished.audit.residual_records += result.audit.residual_records;
            finished.audit.physical_records += result.audit.physical_records;
            if result.snapshot.is_some() {
                finished.snapshot = result.snapshot;
                finished.changes = result.changes;
            }
        }
        Ok(finished)
    }
}

#[cfg(test)]
mod tests {
    use super::lost_peer;

    #[test]
    fn lost_peer_recognises_timely_network_threads_only() {
        let closed = "timely communication error: reading data: socket closed";
        assert_eq!(lost_peer("timely:recv-1", closed), Some(1));
        assert_eq!(lost_peer("timely:send-12", closed), Some(12));
        assert_eq!(lost_peer("timely:recv-1", "MergeQueue poisoned."), None);
        assert_eq!(lost_peer("main", closed), None);
        assert_eq!(lost_peer("timely:recv-x", closed), None);
    }
}
