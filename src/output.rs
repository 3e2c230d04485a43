//! Writing results: one sorted CSV per view, `rejected.csv`, `tombstones.csv` and
//! `summary.json`. Output is deterministic: rows sorted, times in RFC 3339 UTC, ratios with
//! 6 decimals.

use crate::event::{Sym, Time, UserId};
use crate::ingest::{Counts, Names, Rejection};
use crate::runtime::{Audit, Row, Snapshot, ViewConfig};
use crate::time::format_time;
use crate::views::retention_table;
use crate::views::segments::shown_size;
use crate::views::similarity::{closer, fixed_to_f64};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Why output could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {message}")]
pub struct OutputError {
    /// The file or directory.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

/// How user ids are shown: pseudonyms, or raw ids when revealing with the key; and how item
/// symbols are shown: by the names seen in the input.
pub struct UserNames<'a> {
    reveal: Option<&'a HashMap<UserId, Box<str>>>,
    items: Option<&'a Names>,
}

impl<'a> UserNames<'a> {
    /// Shows raw ids for the users in `reveal`, pseudonyms otherwise.
    pub fn new(reveal: Option<&'a HashMap<UserId, Box<str>>>) -> UserNames<'a> {
        UserNames {
            reveal,
            items: None,
        }
    }

    /// Shows item symbols by their names in `items`.
    pub fn with_items(mut self, items: &'a Names) -> UserNames<'a> {
        self.items = Some(items);
        self
    }

    /// The displayed name of an item (its hash in hex when unknown).
    pub fn item(&self, item: Sym) -> String {
        match self.items {
            Some(names) => names.name(item),
            None => Names::default().name(item),
        }
    }

    /// The displayed id of `user`.
    pub fn show(&self, user: UserId) -> String {
        match self.reveal.and_then(|r| r.get(&user)) {
            Some(raw) => raw.to_string(),
            None => user.to_string(),
        }
    }
}

/// One output table: its file stem, CSV header and sorted rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// File stem (`sessions` is written to `sessions.csv`).
    pub name: String,
    /// Column names.
    pub header: Vec<&'static str>,
    /// Rows, sorted.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    fn new(name: impl Into<String>, header: &[&'static str]) -> Table {
        Table {
            name: name.into(),
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }
}

/// Renders a snapshot into the tables of the views in `config`, as of `as_of`: sessions,
/// engagement, segments and their sizes (suppressed below `k_anonymity`), one table per
/// retention matrix (rates with 6 decimals).
pub fn render(
    snapshot: &Snapshot,
    config: &ViewConfig,
    k_anonymity: u64,
    as_of: Time,
    users: &UserNames<'_>,
) -> Vec<Table> {
    let mut sessions = Table::new(
        "sessions",
        &["user", "session_start", "session_end", "events"],
    );
    let mut engagement = Table::new(
        "engagement",
        &[
            "user",
            "events",
            "active_days",
            "sessions",
            "first_seen",
            "last_seen",
            "days_since_last_seen",
        ],
    );
    let mut members = Table::new("segments", &["segment", "user"]);
    let segment_names: HashMap<Sym, &str> = config
        .segments
        .iter()
        .map(|s| (s.key(), s.name()))
        .collect();
    let mut sizes: HashMap<Sym, u64> = HashMap::new();
    let mut cells: Vec<Vec<((i64, i64), u64)>> = vec![Vec::new(); config.retention.len()];
    let mut neighbours = Vec::new();
    let mut item_neighbours = Vec::new();
    let mut recommendations = Vec::new();
    for (row, copies) in snapshot {
        for _ in 0..(*copies).max(0) {
            match row {
                Row::Session(user, s) => sessions.rows.push(vec![
                    users.show(*user),
                    format_time(s.start),
                    format_time(s.end),
                    s.events.to_string(),
                ]),
                Row::Engagement(user, e) => engagement.rows.push(vec![
                    users.show(*user),
                    e.events.to_string(),
                    e.active_days.to_string(),
                    e.sessions.to_string(),
                    format_time(e.first_seen),
                    format_time(e.last_seen),
                    e.days_since_last_seen(as_of).to_string(),
                ]),
                Row::Member(segment, user) => {
                    *sizes.entry(*segment).or_default() += 1;
                    let name = segment_names.get(segment).copied().unwrap_or("?");
                    members.rows.push(vec![name.to_string(), users.show(*user)]);
                }
                Row::Retention(table, cell, retained) => {
                    if let Some(cells) = cells.get_mut(*table as usize) {
                        cells.push((*cell, *retained));
                    }
                }
                Row::Neighbour(user, s) => neighbours.push((users.show(*user), *s)),
                Row::ItemNeighbour(item, s) => item_neighbours.push((users.item(*item), *s)),
                Row::Recommendation(user, r) => recommendations.push((users.show(*user), *r)),
            }
        }
    }
    let mut tables = Vec::new();
    if config.sessions.is_some() {
        tables.push(sessions);
    }
    if config.engagement.is_some() {
        tables.push(engagement);
    }
    if !config.segments.is_empty() {
        tables.push(members);
        let mut table = Table::new("segment_sizes", &["segment", "size"]);
        for segment in &config.segments {
            let size = sizes.get(&segment.key()).copied().unwrap_or(0);
            let shown = shown_size(size, k_anonymity)
                .map_or_else(|| "suppressed".to_string(), |n| n.to_string());
            table.rows.push(vec![segment.name().to_string(), shown]);
        }
        tables.push(table);
    }
    for ((name, spec), cells) in config.retention.iter().zip(cells) {
        let mut table = Table::new(
            format!("retention_{name}"),
            &["cohort", "k", "cohort_size", "retained", "rate"],
        );
        // Rows come sorted by cohort and k, which is the order users read a matrix in.
        table.rows = retention_table(cells, as_of, spec)
            .into_iter()
            .map(|r| {
                vec![
                    r.cohort_label,
                    r.k.to_string(),
                    r.cohort_size.to_string(),
                    r.retained.to_string(),
                    format!("{:.6}", r.rate),
                ]
            })
            .collect();
        tables.push(table);
    }
    for table in tables
        .iter_mut()
        .filter(|t| !t.name.starts_with("retention_"))
    {
        if table.name != "segment_sizes" {
            table.rows.sort();
        }
    }
    // Personalization tables: by subject, then best first (the ranking order of the view).
    if config.similarity_table {
        neighbours.sort_by(|a, b| a.0.cmp(&b.0).then(closer(&a.1, &b.1)));
        let mut table = Table::new("similarity", &["user", "neighbour", "score"]);
        table.rows = neighbours
            .into_iter()
            .map(|(user, s)| vec![user, users.show(s.neighbour), score(s.fixed())])
            .collect();
        tables.push(table);
    }
    if config.similarity.is_some() && config.item_similarity.is_some() {
        item_neighbours.sort_by(|a, b| a.0.cmp(&b.0).then(closer(&a.1, &b.1)));
        let mut table = Table::new("item_similarity", &["item", "neighbour", "score"]);
        table.rows = item_neighbours
            .into_iter()
            .map(|(item, s)| vec![item, users.item(s.neighbour), score(s.fixed())])
            .collect();
        tables.push(table);
    }
    if config.similarity.is_some() && config.recommendations.is_some() {
        recommendations.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.rank.cmp(&b.1.rank)));
        let mut table = Table::new("recommendations", &["user", "rank", "item", "score"]);
        table.rows = recommendations
            .into_iter()
            .map(|(user, r)| vec![user, r.rank.to_string(), users.item(r.item), score(r.score)])
            .collect();
        tables.push(table);
    }
    tables
}

/// A fixed-point score with 6 decimals.
fn score(fixed: i64) -> String {
    format!("{:.6}", fixed_to_f64(fixed))
}

/// One line of the change log: `{"view": …, "row": {…}, "time": …, "diff": ±n}`, the row's
/// columns named as in the view's CSV file (a retention change is one cell of its matrix;
/// engagement rows leave out `days_since_last_seen`, which changes with the clock).
pub fn change_record(
    row: &Row,
    time: u64,
    diff: isize,
    config: &ViewConfig,
    users: &UserNames<'_>,
) -> serde_json::Value {
    use serde_json::json;
    let (view, fields) = match row {
        Row::Session(user, s) => (
            "sessions".to_string(),
            json!({
                "user": users.show(*user),
                "session_start": format_time(s.start),
                "session_end": format_time(s.end),
                "events": s.events,
            }),
        ),
        Row::Engagement(user, e) => (
            "engagement".to_string(),
            json!({
                "user": users.show(*user),
                "events": e.events,
                "active_days": e.active_days,
                "sessions": e.sessions,
                "first_seen": format_time(e.first_seen),
                "last_seen": format_time(e.last_seen),
            }),
        ),
        Row::Member(segment, user) => {
            let name = config
                .segments
                .iter()
                .find(|s| s.key() == *segment)
                .map_or("?", |s| s.name());
            (
                "segments".to_string(),
                json!({ "segment": name, "user": users.show(*user) }),
            )
        }
        Row::Retention(table, (cohort, k), retained) => {
            let (name, spec) = &config.retention[*table as usize];
            (
                format!("retention_{name}"),
                json!({
                    "cohort": spec.period.label(*cohort),
                    "k": k,
                    "retained": retained,
                }),
            )
        }
        Row::Neighbour(user, s) => (
            "similarity".to_string(),
            json!({
                "user": users.show(*user),
                "neighbour": users.show(s.neighbour),
                "score": score(s.fixed()),
            }),
        ),
        Row::ItemNeighbour(item, s) => (
            "item_similarity".to_string(),
            json!({
                "item": users.item(*item),
                "neighbour": users.item(s.neighbour),
                "score": score(s.fixed()),
            }),
        ),
        Row::Recommendation(user, r) => (
            "recommendations".to_string(),
            json!({
                "user": users.show(*user),
                "rank": r.rank,
                "item": users.item(r.item),
                "score": score(r.score),
            }),
        ),
    };
    json!({
        "view": view,
        "row": fields,
        "time": format_time(time as Time),
        "diff": diff,
    })
}

/// Writes a CSV file with a header row.
pub fn write_csv<S: AsRef<str>>(
    path: &Path,
    header: &[&str],
    rows: impl IntoIterator<Item = Vec<S>>,
) -> Result<(), OutputError> {
    let fail = |e: &dyn std::fmt::Display| OutputError {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_path(path)
        .map_err(|e| fail(&e))?;
    writer.write_record(header).map_err(|e| fail(&e))?;
    for row in rows {
        writer
            .write_record(row.iter().map(|s| s.as_ref()))
            .map_err(|e| fail(&e))?;
    }
    writer.flush().map_err(|e| fail(&e))
}

/// Writes `rejected.csv`.
pub fn write_rejections(path: &Path, rejections: &[Rejection]) -> Result<(), OutputError> {
    write_csv(
        path,
        &["source", "line", "reason", "detail", "raw"],
        rejections.iter().map(|r| {
            vec![
                match r.source {
                    crate::ingest::Source::Events => "events".to_string(),
                    crate::ingest::Source::Forget => "forget".to_string(),
                },
                r.line.to_string(),
                r.reason.as_str().to_string(),
                r.detail.clone(),
                r.raw.clone(),
            ]
        }),
    )
}

/// The run summary written to `summary.json` and printed at the end.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Run name.
    pub name: String,
    /// Event rows read.
    pub read: u64,
    /// Accepted rows.
    pub accepted: u64,
    /// Duplicate rows dropped.
    pub duplicates: u64,
    /// Rejected rows (all reasons).
    pub rejected: u64,
    /// Rows rejected as late.
    pub late: u64,
    /// Rows rejected because their user was forgotten.
    pub forgotten_rejected: u64,
    /// Valid forget requests.
    pub forget_requests: u64,
    /// Forget-file rows rejected.
    pub forget_rejected: u64,
    /// Forget requests for users without events.
    pub forget_unknown: u64,
    /// Users whose events were retracted.
    pub forgotten_users: u64,
    /// Events retracted.
    pub retracted_events: u64,
    /// As-of time of the snapshot (RFC 3339), or null without events.
    pub as_of: Option<String>,
    /// Total workers.
    pub workers: usize,
    /// Processes.
    pub processes: usize,
    /// Wall-clock seconds from start to snapshot.
    pub elapsed_s: f64,
    /// Accepted events per second.
    pub events_per_s: f64,
    /// Where the pseudonymization key came from.
    pub key_source: String,
    /// The arrangement audit for forgotten users.
    pub forget_audit: Audit,
    /// The files written.
    pub files: Vec<String>,
}

impl Summary {
    /// Builds the summary from the ingestion counts.
    pub fn new(name: &str, counts: &Counts) -> Summary {
        Summary {
            name: name.to_string(),
            read: counts.read,
            accepted: counts.accepted,
            duplicates: counts.duplicates,
            rejected: counts.rejected,
            late: counts.late,
            forgotten_rejected: counts.forgotten_rejected,
            forget_requests: counts.forget_requests,
            forget_rejected: counts.forget_rejected,
            forget_unknown: counts.forget_unknown,
            forgotten_users: counts.forgotten_users,
            retracted_events: counts.retracted_events,
            as_of: None,
            workers: 1,
            processes: 1,
            elapsed_s: 0.0,
            events_per_s: 0.0,
            key_source: String::new(),
            forget_audit: Audit::default(),
            files: Vec::new(),
        }
    }

    /// The one-screen text summary.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let mut line = |label: &str, value: String| {
            out.push_str(&format!("  {label:<22}{value}\n"));
        };
        line("run", self.name.clone());
        line(
            "rows read",
            format!(
                "{} = {} accepted + {} duplicates + {} rejected ({} late, {} forgotten)",
                self.read,
                self.accepted,
                self.duplicates,
                self.rejected,
                self.late,
                self.forgotten_rejected
            ),
        );
        line(
            "forget requests",
            format!(
                "{} ({} users erased, {} events retracted, {} unknown users, {} bad rows)",
                self.forget_requests,
                self.forgotten_users,
                self.retracted_events,
                self.forget_unknown,
                self.forget_rejected
            ),
        );
        line(
            "forget audit",
            format!(
                "{} records of forgotten users in {} arrangements ({} updates physically left)",
                self.forget_audit.residual_records,
                self.forget_audit.traces,
                self.forget_audit.physical_records
            ),
        );
        line("as of", self.as_of.clone().unwrap_or_else(|| "-".into()));
        line(
            "workers",
            format!("{} ({} processes)", self.workers, self.processes),
        );
        line(
            "time",
            format!("{:.3} s, {:.0} events/s", self.elapsed_s, self.events_per_s),
        );
        line("pseudonym key", self.key_source.clone());
        line("files", self.files.join(", "));
        out
    }
}
