//! Writing results: one sorted CSV per view, `rejected.csv`, `tombstones.csv` and
//! `summary.json`. Output is deterministic: rows sorted, times in RFC 3339 UTC, ratios with
//! 6 decimals.

use crate::event::{Time, UserId};
use crate::ingest::{Counts, Rejection};
use crate::runtime::{Audit, Row, Snapshot};
use crate::time::format_time;
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

/// How user ids are shown: pseudonyms, or raw ids when revealing with the key.
pub struct UserNames<'a> {
    reveal: Option<&'a HashMap<UserId, Box<str>>>,
}

impl<'a> UserNames<'a> {
    /// Shows raw ids for the users in `reveal`, pseudonyms otherwise.
    pub fn new(reveal: Option<&'a HashMap<UserId, Box<str>>>) -> UserNames<'a> {
        UserNames { reveal }
    }

    /// The displayed id of `user`.
    pub fn show(&self, user: UserId) -> String {
        match self.reveal.and_then(|r| r.get(&user)) {
            Some(raw) => raw.to_string(),
            None => user.to_string(),
        }
    }
}

/// The header and the sorted records of each view present in a snapshot, keyed by file name.
pub fn render(
    snapshot: &Snapshot,
    views: &[&'static str],
    as_of: Time,
    users: &UserNames<'_>,
) -> Vec<(&'static str, Vec<Vec<String>>)> {
    let mut tables: Vec<(&'static str, Vec<Vec<String>>)> =
        views.iter().map(|name| (*name, Vec::new())).collect();
    let mut push = |name: &str, record: Vec<String>, copies: isize| {
        if let Some((_, rows)) = tables.iter_mut().find(|(n, _)| *n == name) {
            for _ in 0..copies.max(0) {
                rows.push(record.clone());
            }
        }
    };
    for (row, copies) in snapshot {
        match row {
            Row::Session(user, s) => push(
                "sessions",
                vec![
                    users.show(*user),
                    format_time(s.start),
                    format_time(s.end),
                    s.events.to_string(),
                ],
                *copies,
            ),
            Row::Engagement(user, e) => push(
                "engagement",
                vec![
                    users.show(*user),
                    e.events.to_string(),
                    e.active_days.to_string(),
                    e.sessions.to_string(),
                    format_time(e.first_seen),
                    format_time(e.last_seen),
                    e.days_since_last_seen(as_of).to_string(),
                ],
                *copies,
            ),
        }
    }
    for (_, rows) in tables.iter_mut() {
        rows.sort();
    }
    tables
}

/// The CSV header of a view's file.
pub fn header(view: &str) -> &'static [&'static str] {
    match view {
        "sessions" => &["user", "session_start", "session_end", "events"],
        "engagement" => &[
            "user",
            "events",
            "active_days",
            "sessions",
            "first_seen",
            "last_seen",
            "days_since_last_seen",
        ],
        _ => &[],
    }
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
                "{} records of forgotten users left in {} arrangements",
                self.forget_audit.residual_records, self.forget_audit.traces
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
