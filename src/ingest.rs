//! Ingestion: reading CSV and JSON-lines event files and forget files, validating and
//! pseudonymizing each row, dropping duplicates, quarantining bad and late rows, putting rows in
//! event-time order, and cutting the ordered stream into epochs of updates for the dataflow.
//!
//! Every row read ends up in exactly one of three places: accepted, duplicate, or rejected
//! (with its line, the reason and the redacted raw row), so `read = accepted + duplicates +
//! rejected` always holds.

use crate::event::{Event, PrehashedMap, Sym, Time, UserId, Value};
use crate::privacy::Identities;
use crate::spec::{Format, InputSpec};
use crate::time::parse_time;
use differential_dataflow::hashable::Hashable;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Why an input file could not be read at all (row-level problems are rejections, not errors).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The file is missing or unreadable.
    #[error("cannot read {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file has no header row (or, for JSON lines, no line at all).
    #[error("{path}: the file is empty; expected a header row naming the columns")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The header row lacks a column the spec maps.
    #[error(
        "{path}: line 1: header has no column \"{column}\" (mapped by `{key}`); found: {found}"
    )]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The missing column.
        column: String,
        /// The spec key mapping it.
        key: String,
        /// The header's columns.
        found: String,
    },
    /// The header row itself is malformed.
    #[error("{path}: line {line}: malformed header: {message}")]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// Its line.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// Reading failed midway.
    #[error("{path}: line {line}: read error: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The last line reached.
        line: u64,
        /// The I/O error.
        message: String,
    },
}

/// Why a row was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Not parseable as a CSV record or JSON object, or the wrong number of fields.
    Malformed,
    /// Longer than `max_row_bytes`.
    TooLong,
    /// A mapped field is absent.
    MissingField,
    /// The user id is empty.
    EmptyUser,
    /// The event type is empty.
    EmptyEvent,
    /// The time is not a recognised timestamp (or is before 1970).
    BadTime,
    /// The value is not a number.
    BadValue,
    /// Older than the watermark minus `allowed_lateness`.
    Late,
    /// The user has been forgotten.
    Forgotten,
}

impl Reason {
    /// The reason as written in `rejected.csv`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::TooLong => "too_long",
            Reason::MissingField => "missing_field",
            Reason::EmptyUser => "empty_user",
            Reason::EmptyEvent => "empty_event",
            Reason::BadTime => "bad_time",
            Reason::BadValue => "bad_value",
            Reason::Late => "late",
            Reason::Forgotten => "forgotten",
        }
    }
}

/// Which file a rejected row came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The event file.
    Events,
    /// The forget file.
    Forget,
}

/// One quarantined row: where it was, why, and the row with user ids pseudonymized and PII
/// columns emptied (empty altogether for forgotten users and rows that could not be parsed).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rejection {
    /// File the row came from.
    pub source: Source,
    /// Line number (1-based, the header is line 1).
    pub line: u64,
    /// Why.
    pub reason: Reason,
    /// Details, e.g. the parse error.
    pub detail: String,
    /// The redacted raw row.
    pub raw: String,
    /// The row's pseudonymous user, when known: if they are forgotten later, `raw` is erased.
    pub user: Option<UserId>,
}

/// A redacted raw row and the pseudonym of its user, if the row named one.
#[derive(Clone, Debug, Default)]
pub struct Redacted {
    text: String,
    user: Option<UserId>,
}

/// The ingestion counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Event rows read.
    pub read: u64,
    /// Event rows accepted into the dataflow.
    pub accepted: u64,
    /// Event rows dropped as duplicates of an earlier `id`.
    pub duplicates: u64,
    /// Event rows rejected (all reasons, `late` and `forgotten` included).
    pub rejected: u64,
    /// Of the rejected, those rejected as late.
    pub late: u64,
    /// Of the rejected, those of already forgotten users.
    pub forgotten_rejected: u64,
    /// Valid forget requests.
    pub forget_requests: u64,
    /// Forget-file rows rejected.
    pub forget_rejected: u64,
    /// Forget requests for users with no accepted event (counted, not an error).
    pub forget_unknown: u64,
    /// Distinct users whose events were retracted.
    pub forgotten_users: u64,
    /// Events retracted by forget requests.
    pub retracted_events: u64,
}

/// An epoch of updates, ready for the dataflow: every update is at logical time `time`.
#[derive(Clone, Debug, Default)]
pub struct Epoch {
    /// The epoch's logical time (its end, in event-time seconds).
    pub time: u64,
    /// Updates `(event, +1 | -1)`, one vector per destination shard.
    pub shards: Vec<Vec<(Event, isize)>>,
}

/// How the ingestor cuts and routes its stream.
#[derive(Clone, Debug)]
pub struct Routing {
    /// Epoch length in seconds.
    pub tick: i64,
    /// Number of shards (total workers in the cluster).
    pub shards: usize,
    /// Shards whose events this process feeds and must be able to retract.
    pub local: std::ops::Range<usize>,
}

impl Routing {
    /// One process holding every shard.
    pub fn single(tick: i64, shards: usize) -> Routing {
        Routing {
            tick,
            shards,
            local: 0..shards,
        }
    }

    /// The shard of a user: the worker that differential's exchanges route the user's keys to
    /// (`hashed() % shards`, which timely also computes as a mask for a power-of-two count), so
    /// that the per-user arrangements and folds receive their input without crossing threads.
    pub fn shard(&self, user: UserId) -> usize {
        (user.hashed() % self.shards as u64) as usize
    }

    /// The epoch (logical time) an event time belongs to: the end of its tick.
    pub fn epoch(&self, t: Time) -> u64 {
        let t = t.max(0) as u64;
        t.div_ceil(self.tick as u64) * self.tick as u64
    }
}

/// A forget request: at `time`, erase `user` (a raw id; pseudonymized on release).
#[derive(Clone, Debug)]
struct ForgetRequest {
    time: Time,
    raw: String,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    time: Time,
    seq: u64,
    line: u64,
    event: Event,
}

#[derive(Default)]
struct UserRecords {
    live: u64,
    events: Vec<Event>,
    ids: Vec<Box<str>>,
}

/// The ordering, dedup, lateness and forgetting state machine between parsed rows and epochs.
pub struct Ingestor {
    identities: Identities,
    routing: Routing,
    lateness: i64,
    watermark: Option<Time>,
    heap: BinaryHeap<Reverse<Pending>>,
    seq: u64,
    forgets: VecDeque<ForgetRequest>,
    dedup: HashSet<Box<str>>,
    users: PrehashedMap<UserId, UserRecords>,
    counts: Counts,
    rejections: Vec<Rejection>,
    epoch: Option<Epoch>,
    clock: Option<Time>,
}

impl Ingestor {
    /// An ingestor pseudonymizing with `identities`, tolerating `lateness` seconds of disorder.
    pub fn new(identities: Identities, routing: Routing, lateness: i64) -> Ingestor {
        Ingestor {
            identities,
            routing,
            lateness,
            watermark: None,
            heap: BinaryHeap::new(),
            seq: 0,
            forgets: VecDeque::new(),
            dedup: HashSet::new(),
            users: PrehashedMap::default(),
            counts: Counts::default(),
            rejections: Vec::new(),
            epoch: None,
            clock: None,
        }
    }

    /// The identities (pseudonyms, tombstones, reveal map).
    pub fn identities(&self) -> &Identities {
        &self.identities
    }

    /// The counts so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// The rejected rows so far, sorted by file and line.
    pub fn rejections(&mut self) -> &[Rejection] {
        self.rejections.sort();
        &self.rejections
    }

    /// The pseudonym of a raw id and how it is shown in rejected rows: the raw id itself only
    /// when revealing (and never for a forgotten user).
    fn display_user(&mut self, raw: &str) -> (UserId, String) {
        let user = self.identities.pseudonym(raw);
        match self.identities.reveal_map() {
            Some(map) if map.contains_key(&user) => (user, raw.to_string()),
            _ => (user, user.to_string()),
        }
    }

    /// Adds the forget requests (sorted by time, stable) to be merged with the events.
    fn add_forgets(&mut self, mut requests: Vec<ForgetRequest>) {
        requests.sort_by_key(|r| r.time);
        self.forgets.extend(requests);
    }

    /// Counts a rejected event row.
    fn reject(&mut self, line: u64, reason: Reason, detail: String, raw: Redacted) {
        // Nothing of a forgotten user's rows is kept, not even pseudonymized.
        let raw = match raw.user {
            Some(user) if self.identities.is_forgotten(user) => Redacted::default(),
            _ => raw,
        };
        self.counts.rejected += 1;
        match reason {
            Reason::Late => self.counts.late += 1,
            Reason::Forgotten => self.counts.forgotten_rejected += 1,
            _ => {}
        }
        self.rejections.push(Rejection {
            source: Source::Events,
            line,
            reason,
            detail,
            raw: raw.text,
            user: raw.user,
        });
    }

    /// Offers one valid, parsed event row (with its dedup id); `emit` receives finished epochs.
    fn offer(
        &mut self,
        line: u64,
        event: Event,
        id: Option<&str>,
        emit: &mut dyn FnMut(Epoch),
    ) -> Option<(Reason, String)> {
        self.counts.read += 1;
        self.observe(event.time);
        if self.identities.is_forgotten(event.user) {
            self.reject(line, Reason::Forgotten, String::new(), Redacted::default());
            return None;
        }
        if let Some(watermark) = self.watermark {
            if event.time < watermark - self.lateness {
                let detail = format!(
                    "time {} is older than the watermark {} minus allowed_lateness {}s",
                    crate::time::format_time(event.time),
                    crate::time::format_time(watermark),
                    self.lateness
                );
                return Some((Reason::Late, detail));
            }
        }
        if let Some(id) = id.filter(|id| !id.is_empty()) {
            if !self.dedup.insert(id.into()) {
                self.counts.duplicates += 1;
                return None;
            }
            self.users
                .entry(event.user)
                .or_default()
                .ids
                .push(id.into());
        }
        self.watermark = Some(self.watermark.map_or(event.time, |w| w.max(event.time)));
        let upto = self.watermark.unwrap_or(i64::MIN) - self.lateness;
        let nothing_before =
            self.heap.is_empty() && self.forgets.front().is_none_or(|f| f.time >= event.time);
        if event.time <= upto && nothing_before {
            // In order and due: what the buffer would release next anyway.
            self.release_event(line, event, emit);
        } else {
            self.seq += 1;
            self.heap.push(Reverse(Pending {
                time: event.time,
                seq: self.seq,
                line,
                event,
            }));
        }
        self.release(upto, emit);
        None
    }

    /// Releases, in time order, every buffered event and forget request at or before `upto`.
    fn release(&mut self, upto: Time, emit: &mut dyn FnMut(Epoch)) {
        loop {
            let next_event = self.heap.peek().map(|p| p.0.time).filter(|&t| t <= upto);
            let next_forget = self.forgets.front().map(|f| f.time).filter(|&t| t <= upto);
            match (next_event, next_forget) {
                (Some(te), Some(tf)) if tf < te => self.release_forget(emit),
                (Some(_), _) => {
                    let Reverse(pending) = self.heap.pop().expect("peeked");
                    self.release_event(pending.line, pending.event, emit);
                }
                (None, Some(_)) => self.release_forget(emit),
                (None, None) => return,
            }
        }
    }

    fn release_event(&mut self, line: u64, event: Event, emit: &mut dyn FnMut(Epoch)) {
        if self.identities.is_forgotten(event.user) {
            // Read before its user's forget request was released: never enters the dataflow.
            self.reject(line, Reason::Forgotten, String::new(), Redacted::default());
            return;
        }
        self.counts.accepted += 1;
        let shard = self.routing.shard(event.user);
        let local = self.routing.local.contains(&shard);
        let records = self.users.entry(event.user).or_default();
        records.live += 1;
        if local {
            records.events.push(event.clone());
        }
        let time = event.time;
        if local {
            self.push(time, shard, (event, 1), emit);
        } else {
            self.advance_epoch(time, emit);
        }
    }

    fn release_forget(&mut self, emit: &mut dyn FnMut(Epoch)) {
        let request = self.forgets.pop_front().expect("peeked");
        let user = self.identities.forget(&request.raw);
        let records = self.users.remove(&user).unwrap_or_default();
        for rejection in self.rejections.iter_mut().filter(|r| r.user == Some(user)) {
            rejection.raw.clear();
        }
        for id in &records.ids {
            self.dedup.remove(id);
        }
        if records.live == 0 {
            self.counts.forget_unknown += 1;
        } else {
            self.counts.forgotten_users += 1;
            self.counts.retracted_events += records.live;
        }
        self.advance_epoch(request.time, emit);
        let shard = self.routing.shard(user);
        for event in records.events {
            self.push(request.time, shard, (event, -1), emit);
        }
        self.observe(request.time);
    }

    /// Advances the stream clock, from which the as-of time of the final snapshot comes: the
    /// latest time of any valid event row (a forgotten user's included: time passes whoever
    /// sends the events) or forget request.
    fn observe(&mut self, time: Time) {
        self.clock = Some(self.clock.map_or(time, |c| c.max(time)));
    }

    /// Makes sure the current epoch is the one of `time`, emitting the previous one.
    fn advance_epoch(&mut self, time: Time, emit: &mut dyn FnMut(Epoch)) {
        let epoch = self.routing.epoch(time);
        match &self.epoch {
            Some(current) if current.time == epoch => {}
            _ => {
                let next = Epoch {
                    time: epoch,
                    shards: vec![Vec::new(); self.routing.shards],
                };
                if let Some(done) = self.epoch.replace(next) {
                    emit(done);
                }
            }
        }
    }

    fn push(
        &mut self,
        time: Time,
        shard: usize,
        update: (Event, isize),
        emit: &mut dyn FnMut(Epoch),
    ) {
        self.advance_epoch(time, emit);
        if let Some(epoch) = &mut self.epoch {
            epoch.shards[shard].push(update);
        }
    }

    /// Ends the stream: releases everything buffered and every remaining forget request,
    /// and emits the last epoch at the as-of time, which it returns: the stream clock (see
    /// `Ingestor::observe`), or `as_of` if that is later.
    pub fn finish(&mut self, as_of: Option<Time>, emit: &mut dyn FnMut(Epoch)) -> Option<Time> {
        self.release(Time::MAX, emit);
        let as_of = match (self.clock, as_of) {
            (Some(r), Some(a)) => Some(r.max(a)),
            (r, a) => r.or(a),
        };
        if let Some(mut last) = self.epoch.take() {
            if let Some(as_of) = as_of {
                last.time = last.time.min(as_of.max(0) as u64);
            }
            emit(last);
        }
        as_of
    }
}

/// Column positions of the mapped fields in a CSV header.
struct Layout {
    user: usize,
    time: usize,
    /// `None` when every row has the spec's `input.event_type`.
    event: Option<usize>,
    item: Option<usize>,
    id: Option<usize>,
    value: Option<usize>,
    props: Vec<(Sym, usize)>,
    pii: Vec<usize>,
    width: usize,
}

/// Field text of one parsed row, by meaning.
struct Fields<'a> {
    user: Option<&'a str>,
    time: Option<&'a str>,
    event: Option<&'a str>,
    item: Option<&'a str>,
    id: Option<&'a str>,
    value: Option<&'a str>,
    props: Vec<(Sym, &'a str)>,
}

/// Checks a row's fields and turns them into an event (with its dedup id).
fn validate<'a>(
    fields: &Fields<'a>,
    identities: &mut Identities,
) -> Result<(Event, Option<&'a str>), (Reason, String)> {
    let user = fields
        .user
        .ok_or((Reason::MissingField, "no user field".to_string()))?;
    let user = user.trim();
    if user.is_empty() {
        return Err((Reason::EmptyUser, "the user id is empty".into()));
    }
    let time_text = fields
        .time
        .ok_or((Reason::MissingField, "no time field".to_string()))?;
    let time = parse_time(time_text).ok_or_else(|| {
        (
            Reason::BadTime,
            format!("\"{time_text}\" is not RFC 3339, \"YYYY-MM-DD HH:MM:SS\" or unix seconds"),
        )
    })?;
    if time < 0 {
        return Err((Reason::BadTime, format!("\"{time_text}\" is before 1970")));
    }
    let kind = fields
        .event
        .ok_or((Reason::MissingField, "no event field".to_string()))?
        .trim();
    if kind.is_empty() {
        return Err((Reason::EmptyEvent, "the event type is empty".into()));
    }
    let value = match fields.value.map(str::trim).filter(|v| !v.is_empty()) {
        None => None,
        Some(text) => Some(
            text.parse::<f64>()
                .ok()
                .and_then(Value::from_f64)
                .ok_or_else(|| (Reason::BadValue, format!("\"{text}\" is not a number")))?,
        ),
    };
    let item = fields
        .item
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .map(Sym::of);
    let mut props: Vec<(Sym, Sym)> = fields
        .props
        .iter()
        .map(|(name, text)| (*name, Sym::of(text)))
        .collect();
    props.sort();
    let event = Event {
        time,
        user: identities.pseudonym(user),
        kind: Sym::of(kind),
        item,
        value,
        props,
    };
    Ok((event, fields.id.map(str::trim)))
}

/// Display names of interned symbols (event types, items, properties) seen in the input.
#[derive(Clone, Debug, Default)]
pub struct Names {
    names: PrehashedMap<Sym, String>,
}

impl Names {
    /// Records the name of `sym` (its string is only copied the first time).
    pub fn note(&mut self, sym: Sym, name: &str) {
        self.names.entry(sym).or_insert_with(|| name.to_string());
    }

    /// The name of a symbol, or its hash in hex when unknown.
    pub fn name(&self, sym: Sym) -> String {
        self.names
            .get(&sym)
            .cloned()
            .unwrap_or_else(|| format!("#{:016x}", sym.0))
    }
}

/// What a whole ingestion produced besides the epochs.
pub struct IngestReport {
    /// The counts.
    pub counts: Counts,
    /// Rejected rows, sorted by file and line.
    pub rejections: Vec<Rejection>,
    /// The as-of time of the final snapshot (`None` for an input without events).
    pub as_of: Option<Time>,
    /// The tombstone list (pseudonyms only).
    pub tombstones: Vec<UserId>,
    /// Pseudonym → raw id, when revealing was asked for.
    pub reveal: Option<HashMap<UserId, Box<str>>>,
    /// Names of items and event types.
    pub names: Names,
}

/// Options of one ingestion.
pub struct IngestOptions<'a> {
    /// The `[input]` table.
    pub input: &'a InputSpec,
    /// Event file (overrides `input.events`).
    pub events: &'a Path,
    /// Forget file (overrides `input.forget`).
    pub forget: Option<&'a Path>,
    /// How to cut and route the stream.
    pub routing: Routing,
    /// Pseudonymization key.
    pub key: &'a [u8],
    /// Keep the map back to raw ids.
    pub reveal: bool,
    /// The as-of time to advance to at the end, if later than the data.
    pub as_of: Option<Time>,
    /// Called every 65,536 rows with the number of rows read so far.
    pub progress: Option<&'a mut dyn FnMut(u64)>,
}

/// Reads the input files through an [`Ingestor`], handing each finished epoch to `emit`.
pub fn ingest(
    mut options: IngestOptions<'_>,
    emit: &mut dyn FnMut(Epoch),
) -> Result<IngestReport, IngestError> {
    let input = options.input;
    let identities = Identities::new(options.key, options.reveal);
    let mut ingestor = Ingestor::new(
        identities,
        options.routing.clone(),
        input.allowed_lateness.0,
    );
    let mut names = Names::default();
    if let Some(path) = options.forget {
        let requests = read_forgets(path, &mut ingestor)?;
        ingestor.add_forgets(requests);
    }
    let mut progress = options.progress.take();
    let mut tick = |read: u64| {
        if read.is_multiple_of(65_536) {
            if let Some(progress) = progress.as_mut() {
                progress(read);
            }
        }
    };
    let read = match input.format {
        Format::Csv => read_csv,
        Format::Jsonl => read_jsonl,
    };
    read(
        input,
        options.events,
        &mut ingestor,
        &mut names,
        emit,
        &mut tick,
    )?;
    let as_of = ingestor.finish(options.as_of, emit);
    let mut rejections = std::mem::take(&mut ingestor.rejections);
    rejections.sort();
    Ok(IngestReport {
        counts: ingestor.counts.clone(),
        rejections,
        as_of,
        tombstones: ingestor.identities.tombstones(),
        reveal: ingestor.identities.reveal_map().cloned(),
        names,
    })
}

fn open(path: &Path) -> Result<File, IngestError> {
    File::open(path).map_err(|source| IngestError::Open {
        path: path.to_owned(),
        source,
    })
}

/// Opens a CSV file (rows of any width, so bad rows can be quarantined) and reads its header,
/// which must name at least one column.
fn open_csv(
    path: &Path,
    delimiter: u8,
) -> Result<(csv::Reader<BufReader<File>>, csv::StringRecord), IngestError> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .flexible(true)
        .from_reader(BufReader::with_capacity(1 << 20, open(path)?));
    let header = reader
        .headers()
        .map_err(|e| IngestError::BadHeader {
            path: path.to_owned(),
            line: 1,
            message: e.to_string(),
        })?
        .clone();
    if header.is_empty() || (header.len() == 1 && header[0].trim().is_empty()) {
        return Err(IngestError::Empty {
            path: path.to_owned(),
        });
    }
    Ok((reader, header))
}

fn csv_layout(
    input: &InputSpec,
    path: &Path,
    header: &csv::StringRecord,
) -> Result<Layout, IngestError> {
    let find = |key: &str, column: &str| -> Result<usize, IngestError> {
        header
            .iter()
            .position(|h| h.trim() == column)
            .ok_or_else(|| IngestError::MissingColumn {
                path: path.to_owned(),
                column: column.to_string(),
                key: key.to_string(),
                found: header.iter().collect::<Vec<_>>().join(", "),
            })
    };
    let optional = |key: &str, column: &Option<String>| -> Result<Option<usize>, IngestError> {
        column.as_deref().map(|c| find(key, c)).transpose()
    };
    let mut props = Vec::new();
    for column in &input.properties {
        props.push((Sym::of(column), find("input.properties", column)?));
    }
    Ok(Layout {
        user: find("input.user", &input.user)?,
        time: find("input.time", &input.time)?,
        event: if input.event_type.is_some() {
            None
        } else {
            Some(find("input.event", &input.event)?)
        },
        item: optional("input.item", &input.item)?,
        id: optional("input.id", &input.id)?,
        value: optional("input.value", &input.value)?,
        props,
        pii: header
            .iter()
            .enumerate()
            .filter(|(_, h)| input.pii.iter().any(|p| p == h.trim()))
            .map(|(i, _)| i)
            .collect(),
        width: header.len(),
    })
}

fn read_csv(
    input: &InputSpec,
    path: &Path,
    ingestor: &mut Ingestor,
    names: &mut Names,
    emit: &mut dyn FnMut(Epoch),
    progress: &mut dyn FnMut(u64),
) -> Result<(), IngestError> {
    let (mut reader, header) = open_csv(path, input.delimiter_byte())?;
    let layout = csv_layout(input, path, &header)?;
    let mut record = csv::ByteRecord::new();
    let mut line = 1u64;
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                line = record.position().map_or(line + 1, |p| p.line());
                // The whole row's bytes, delimiters, quotes and line end included.
                let start = record.position().map_or(0, |p| p.byte());
                let length = reader.position().byte().saturating_sub(start);
                progress(ingestor.counts.read + 1);
                let row = CsvRow {
                    line,
                    length: length as usize,
                    record: &record,
                };
                csv_row(input, &layout, row, ingestor, names, emit);
            }
            Err(error) => {
                line = error.position().map_or(line + 1, |p| p.line());
                match error.kind() {
                    csv::ErrorKind::Io(e) => {
                        return Err(IngestError::Io {
                            path: path.to_owned(),
                            line,
                            message: e.to_string(),
                        })
                    }
                    _ => {
                        ingestor.counts.read += 1;
                        ingestor.reject(
                            line,
                            Reason::Malformed,
                            error.to_string(),
                            Redacted::default(),
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// One CSV record with its line number and its length in bytes.
struct CsvRow<'a> {
    line: u64,
    length: usize,
    record: &'a csv::ByteRecord,
}

fn csv_row(
    input: &InputSpec,
    layout: &Layout,
    row: CsvRow<'_>,
    ingestor: &mut Ingestor,
    names: &mut Names,
    emit: &mut dyn FnMut(Epoch),
) {
    let CsvRow {
        line,
        length,
        record,
    } = row;
    let redacted = |ingestor: &mut Ingestor, record: &csv::ByteRecord| {
        redact_csv(input, layout, record, ingestor)
    };
    if length > input.max_row_bytes {
        ingestor.counts.read += 1;
        let detail = format!(
            "{length} bytes exceed max_row_bytes {}",
            input.max_row_bytes
        );
        ingestor.reject(line, Reason::TooLong, detail, Redacted::default());
        return;
    }
    if record.len() != layout.width {
        // Fields cannot be told apart in a row of the wrong width: keep none of them, so no
        // shifted PII or raw id can be written.
        ingestor.counts.read += 1;
        let detail = format!("expected {} fields, found {}", layout.width, record.len());
        ingestor.reject(line, Reason::Malformed, detail, Redacted::default());
        return;
    }
    let text = |i: usize| record.get(i).and_then(|b| std::str::from_utf8(b).ok());
    if let Some(bad) = (0..record.len()).find(|&i| text(i).is_none()) {
        ingestor.counts.read += 1;
        let detail = format!("field {} is not valid UTF-8", bad + 1);
        ingestor.reject(line, Reason::Malformed, detail, Redacted::default());
        return;
    }
    let fields = Fields {
        user: text(layout.user),
        time: text(layout.time),
        event: match layout.event {
            Some(i) => text(i),
            None => input.event_type.as_deref(),
        },
        item: layout.item.and_then(text),
        id: layout.id.and_then(text),
        value: layout.value.and_then(text),
        props: layout
            .props
            .iter()
            .filter_map(|(name, i)| text(*i).map(|t| (*name, t)))
            .collect(),
    };
    match validate(&fields, &mut ingestor.identities) {
        Ok((event, id)) => {
            note_names(names, &fields, &event);
            if let Some((reason, detail)) = ingestor.offer(line, event, id, emit) {
                let raw = redacted(ingestor, record);
                ingestor.reject(line, reason, detail, raw);
            }
        }
        Err((reason, detail)) => {
            ingestor.counts.read += 1;
            let raw = redacted(ingestor, record);
            ingestor.reject(line, reason, detail, raw);
        }
    }
}

fn note_names(names: &mut Names, fields: &Fields<'_>, event: &Event) {
    if let Some(kind) = fields.event {
        names.note(event.kind, kind.trim());
    }
    if let (Some(item), Some(sym)) = (fields.item, event.item) {
        names.note(sym, item.trim());
    }
}

/// The row as CSV text with the user id pseudonymized and PII fields emptied.
fn redact_csv(
    input: &InputSpec,
    layout: &Layout,
    record: &csv::ByteRecord,
    ingestor: &mut Ingestor,
) -> Redacted {
    let mut pseudonym = None;
    let mut fields: Vec<String> = record
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    for &i in &layout.pii {
        if let Some(field) = fields.get_mut(i) {
            field.clear();
        }
    }
    if let Some(user) = fields.get_mut(layout.user) {
        if !user.trim().is_empty() {
            let (id, shown) = ingestor.display_user(user.trim());
            pseudonym = Some(id);
            *user = shown;
        }
    }
    let mut writer = csv::WriterBuilder::new()
        .delimiter(input.delimiter_byte())
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::new());
    // Writing to memory cannot fail.
    let _ = writer.write_record(&fields);
    let bytes = writer.into_inner().unwrap_or_default();
    Redacted {
        text: String::from_utf8_lossy(&bytes)
            .trim_end_matches('\n')
            .to_string(),
        user: pseudonym,
    }
}

fn json_text(value: Option<&serde_json::Value>) -> Option<std::borrow::Cow<'_, str>> {
    match value? {
        serde_json::Value::String(s) => Some(std::borrow::Cow::Borrowed(s.as_str())),
        serde_json::Value::Number(n) => Some(std::borrow::Cow::Owned(n.to_string())),
        serde_json::Value::Bool(b) => Some(std::borrow::Cow::Owned(b.to_string())),
        serde_json::Value::Null => None,
        other => Some(std::borrow::Cow::Owned(other.to_string())),
    }
}

fn read_jsonl(
    input: &InputSpec,
    path: &Path,
    ingestor: &mut Ingestor,
    names: &mut Names,
    emit: &mut dyn FnMut(Epoch),
    progress: &mut dyn FnMut(u64),
) -> Result<(), IngestError> {
    let mut reader = BufReader::with_capacity(1 << 20, open(path)?);
    let mut buffer = Vec::new();
    let mut line = 0u64;
    let mut seen_any = false;
    loop {
        buffer.clear();
        let n = reader
            .by_ref()
            .take(input.max_row_bytes as u64 + 2)
            .read_until(b'\n', &mut buffer)
            .map_err(|e| IngestError::Io {
                path: path.to_owned(),
                line: line + 1,
                message: e.to_string(),
            })?;
        if n == 0 {
            break;
        }
        seen_any = true;
        line += 1;
        if !buffer.ends_with(b"\n") && buffer.len() > input.max_row_bytes {
            // Skip the rest of the over-long line.
            let mut rest = 0usize;
            loop {
                let chunk = reader.fill_buf().map_err(|e| IngestError::Io {
                    path: path.to_owned(),
                    line,
                    message: e.to_string(),
                })?;
                if chunk.is_empty() {
                    break;
                }
                match chunk.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        rest += i;
                        reader.consume(i + 1);
                        break;
                    }
                    None => {
                        let len = chunk.len();
                        rest += len;
                        reader.consume(len);
                    }
                }
            }
            ingestor.counts.read += 1;
            let detail = format!(
                "{} bytes exceed max_row_bytes {}",
                buffer.len() + rest,
                input.max_row_bytes
            );
            ingestor.reject(line, Reason::TooLong, detail, Redacted::default());
            continue;
        }
        let text = trim_line(&buffer);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        progress(ingestor.counts.read + 1);
        if text.len() > input.max_row_bytes {
            ingestor.counts.read += 1;
            let detail = format!(
                "{} bytes exceed max_row_bytes {}",
                text.len(),
                input.max_row_bytes
            );
            ingestor.reject(line, Reason::TooLong, detail, Redacted::default());
            continue;
        }
        json_row(input, line, text, ingestor, names, emit);
    }
    if !seen_any {
        return Err(IngestError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(())
}

fn trim_line(buffer: &[u8]) -> &[u8] {
    let mut end = buffer.len();
    while end > 0 && (buffer[end - 1] == b'\n' || buffer[end - 1] == b'\r') {
        end -= 1;
    }
    &buffer[..end]
}

fn json_row(
    input: &InputSpec,
    line: u64,
    text: &[u8],
    ingestor: &mut Ingestor,
    names: &mut Names,
    emit: &mut dyn FnMut(Epoch),
) {
    let object = match serde_json::from_slice::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(object)) => object,
        Ok(_) => {
            ingestor.counts.read += 1;
            ingestor.reject(
                line,
                Reason::Malformed,
                "expected a JSON object".into(),
                Redacted::default(),
            );
            return;
        }
        Err(e) => {
            ingestor.counts.read += 1;
            ingestor.reject(
                line,
                Reason::Malformed,
                format!("invalid JSON: {e}"),
                Redacted::default(),
            );
            return;
        }
    };
    let get = |column: &str| json_text(object.get(column));
    let optional = |column: &Option<String>| column.as_deref().and_then(get);
    let user = get(&input.user);
    let time = get(&input.time);
    let event = match &input.event_type {
        Some(kind) => Some(std::borrow::Cow::Borrowed(kind.as_str())),
        None => get(&input.event),
    };
    let item = optional(&input.item);
    let id = optional(&input.id);
    let value = optional(&input.value);
    let props: Vec<(Sym, std::borrow::Cow<'_, str>)> = input
        .properties
        .iter()
        .filter_map(|p| get(p).map(|v| (Sym::of(p), v)))
        .collect();
    let fields = Fields {
        user: user.as_deref(),
        time: time.as_deref(),
        event: event.as_deref(),
        item: item.as_deref(),
        id: id.as_deref(),
        value: value.as_deref(),
        props: props.iter().map(|(k, v)| (*k, v.as_ref())).collect(),
    };
    let outcome = validate(&fields, &mut ingestor.identities);
    let rejected = match outcome {
        Ok((event, id)) => {
            note_names(names, &fields, &event);
            ingestor.offer(line, event, id, emit)
        }
        Err(rejection) => {
            ingestor.counts.read += 1;
            Some(rejection)
        }
    };
    if let Some((reason, detail)) = rejected {
        let mut redacted = object.clone();
        for column in &input.pii {
            redacted.remove(column);
        }
        let mut pseudonym = None;
        if let Some(raw_user) = json_text(object.get(&input.user)) {
            if !raw_user.trim().is_empty() {
                let (id, shown) = ingestor.display_user(raw_user.trim());
                pseudonym = Some(id);
                redacted.insert(input.user.clone(), serde_json::Value::String(shown));
            }
        }
        let raw = Redacted {
            text: serde_json::Value::Object(redacted).to_string(),
            user: pseudonym,
        };
        ingestor.reject(line, reason, detail, raw);
    }
}

/// Reads a forget file (`user,time` CSV with a header); bad rows are rejected, not errors.
fn read_forgets(path: &Path, ingestor: &mut Ingestor) -> Result<Vec<ForgetRequest>, IngestError> {
    let (mut reader, header) = open_csv(path, b',')?;
    let find = |column: &str| {
        header
            .iter()
            .position(|h| h.trim() == column)
            .ok_or_else(|| IngestError::MissingColumn {
                path: path.to_owned(),
                column: column.to_string(),
                key: "forget file format (user,time)".to_string(),
                found: header.iter().collect::<Vec<_>>().join(", "),
            })
    };
    let (user_at, time_at) = (find("user")?, find("time")?);
    let mut requests = Vec::new();
    let mut record = csv::StringRecord::new();
    let mut line = 1u64;
    loop {
        let reject = |ingestor: &mut Ingestor, line: u64, reason: Reason, detail: String| {
            ingestor.counts.forget_rejected += 1;
            ingestor.rejections.push(Rejection {
                source: Source::Forget,
                line,
                reason,
                detail,
                raw: String::new(),
                user: None,
            });
        };
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                line = record.position().map_or(line + 1, |p| p.line());
                if record.len() != header.len() {
                    let detail =
                        format!("expected {} fields, found {}", header.len(), record.len());
                    reject(ingestor, line, Reason::Malformed, detail);
                    continue;
                }
                let user = record[user_at].trim();
                let time_text = record[time_at].trim();
                if user.is_empty() {
                    reject(
                        ingestor,
                        line,
                        Reason::EmptyUser,
                        "the user id is empty".into(),
                    );
                    continue;
                }
                match parse_time(time_text).filter(|t| *t >= 0) {
                    Some(time) => {
                        ingestor.counts.forget_requests += 1;
                        requests.push(ForgetRequest {
                            time,
                            raw: user.to_string(),
                        });
                    }
                    None => {
                        let detail = format!("\"{time_text}\" is not a time at or after 1970");
                        reject(ingestor, line, Reason::BadTime, detail);
                    }
                }
            }
            Err(error) => {
                line = error.position().map_or(line + 1, |p| p.line());
                if let csv::ErrorKind::Io(e) = error.kind() {
                    return Err(IngestError::Io {
                        path: path.to_owned(),
                        line,
                        message: e.to_string(),
                    });
                }
                reject(ingestor, line, Reason::Malformed, error.to_string());
            }
        }
    }
    Ok(requests)
}
