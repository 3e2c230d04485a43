//! Shared test helpers: plain batch oracles of the views, and replay on temporary files.
#![allow(dead_code)]

pub mod dataflow;

use behave::replay::{replay, ReplayOptions, ReplayOutcome};
use behave::runtime::Cluster;
use behave::spec::Spec;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The files the shipped learning spec writes that must not depend on the worker count.
pub const LEARNING_FILES: [&str; 7] = [
    "sessions.csv",
    "engagement.csv",
    "segments.csv",
    "segment_sizes.csv",
    "retention_weekly_lessons.csv",
    "retention_daily_ist.csv",
    "rejected.csv",
];

/// One event as the oracle sees it: raw user id and time.
#[derive(Clone, Debug)]
pub struct RawEvent {
    pub user: String,
    pub time: i64,
    pub kind: String,
}

/// The plain definition of sessions: sort each user's times; a gap longer than `gap` splits.
/// Returns `(user, start, end, events)` rows, formatted like `sessions.csv`.
pub fn oracle_sessions(events: &[RawEvent], gap: i64) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for (user, times) in times_by_user(events) {
        let mut start = times[0];
        let mut end = times[0];
        let mut count = 0u64;
        for &t in &times {
            if t - end > gap {
                rows.push(session_row(&user, start, end, count));
                start = t;
                count = 0;
            }
            end = t;
            count += 1;
        }
        rows.push(session_row(&user, start, end, count));
    }
    rows.sort();
    rows
}

fn session_row(user: &str, start: i64, end: i64, count: u64) -> Vec<String> {
    vec![
        user.to_string(),
        behave::time::format_time(start),
        behave::time::format_time(end),
        count.to_string(),
    ]
}

/// The plain definition of engagement, formatted like `engagement.csv`.
pub fn oracle_engagement(
    events: &[RawEvent],
    gap: i64,
    offset: i64,
    as_of: i64,
) -> Vec<Vec<String>> {
    let sessions = oracle_sessions(events, gap);
    let mut rows = Vec::new();
    for (user, times) in times_by_user(events) {
        let days: std::collections::BTreeSet<i64> = times
            .iter()
            .map(|t| (t + offset).div_euclid(86_400))
            .collect();
        let first = times[0];
        let last = *times.last().unwrap();
        rows.push(vec![
            user.clone(),
            times.len().to_string(),
            days.len().to_string(),
            sessions.iter().filter(|s| s[0] == user).count().to_string(),
            behave::time::format_time(first),
            behave::time::format_time(last),
            ((as_of - last).max(0) / 86_400).to_string(),
        ]);
    }
    rows.sort();
    rows
}

fn times_by_user(events: &[RawEvent]) -> BTreeMap<String, Vec<i64>> {
    let mut by_user: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for e in events {
        by_user.entry(e.user.clone()).or_default().push(e.time);
    }
    for times in by_user.values_mut() {
        times.sort();
    }
    by_user
}

/// Writes events as CSV (`id,user,time,event`) in the given order.
pub fn write_events(path: &Path, events: &[RawEvent]) {
    let mut text = String::from("id,user,time,event\n");
    for (i, e) in events.iter().enumerate() {
        text.push_str(&format!("ev{i},{},{},{}\n", e.user, e.time, e.kind));
    }
    std::fs::write(path, text).unwrap();
}

/// Writes forget requests as CSV (`user,time`).
pub fn write_forgets(path: &Path, forgets: &[(String, i64)]) {
    let mut text = String::from("user,time\n");
    for (user, time) in forgets {
        text.push_str(&format!("{user},{time}\n"));
    }
    std::fs::write(path, text).unwrap();
}

/// A spec over `events` (and `forget`) with every view: sessions, engagement, three
/// segments and two retention tables.
pub fn spec_for(
    events: &Path,
    forget: Option<&Path>,
    gap: &str,
    tick: &str,
    lateness: &str,
) -> Spec {
    let forget = forget
        .map(|f| format!("forget = {:?}\n", f.display().to_string()))
        .unwrap_or_default();
    let text = format!(
        r#"
tick = "{tick}"
[input]
events = {events:?}
{forget}user = "user"
time = "time"
event = "event"
id = "id"
allowed_lateness = "{lateness}"
key_env = "BEHAVE_TEST_UNSET_KEY_VARIABLE"
key = "test-key"
[sessions]
gap = "{gap}"
[engagement]
[[segment]]
name = "buyers"
kind = "rule"
event = "buy"
at_least = 2
within = "3d"
[[segment]]
name = "top"
kind = "percentile"
percentile = 75
within = "5d"
[[segment]]
name = "asleep"
kind = "dormant"
within = "2d"
[[retention]]
name = "daily"
period = "day"
utc_offset = "+05:30"
[[retention]]
name = "weekly"
period = "week"
start_event = "view"
return_event = "buy"
unbounded = true
"#,
        events = events.display().to_string(),
    );
    Spec::parse(&text, Path::new("test.toml")).unwrap()
}

/// Replays in process with `workers` threads, revealing raw ids, writing nothing.
pub fn run(spec: Spec, workers: usize, as_of: Option<i64>) -> ReplayOutcome {
    replay(ReplayOptions {
        spec,
        events: None,
        forget: None,
        out: None,
        changes: None,
        reveal_ids: true,
        as_of,
        cluster: Cluster::local(workers),
        progress: false,
        started: None,
    })
    .unwrap()
}

/// The rendered rows of one view.
pub fn table(outcome: &ReplayOutcome, view: &str) -> Vec<Vec<String>> {
    outcome
        .tables
        .iter()
        .find(|t| t.name == view)
        .map(|t| t.rows.clone())
        .unwrap_or_default()
}

/// A fresh temporary directory.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The `behave` binary with `args`, run from the repository root with `$BEHAVE_KEY` unset (so
/// the shipped specs' demo key is used).
pub fn behave_command(args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(behave_bin());
    command
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("BEHAVE_KEY");
    command
}

/// Path of the `behave` binary built for integration tests.
pub fn behave_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_behave"))
}
