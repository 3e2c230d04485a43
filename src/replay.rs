//! A whole replay: spec → ingestion → dataflow → snapshot files and summary.

use crate::event::Time;
use crate::ingest::{ingest, IngestError, IngestOptions, Routing};
use crate::output::{self, OutputError, Summary, Table, UserNames};
use crate::privacy::{load_key, KeyError};
use crate::runtime::{Cluster, Runner, RuntimeError, Snapshot, ViewConfig};
use crate::spec::{Spec, SpecError};
use crate::time::format_time;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The spec is unusable.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// No pseudonymization key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// An input file is unusable.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The dataflow failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Output could not be written.
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// Everything a replay needs besides the spec.
pub struct ReplayOptions {
    /// The spec.
    pub spec: Spec,
    /// Event file (default: the spec's).
    pub events: Option<PathBuf>,
    /// Forget file (default: the spec's).
    pub forget: Option<PathBuf>,
    /// Output directory; `None` writes nothing.
    pub out: Option<PathBuf>,
    /// Write every change of every view to this file as JSON lines.
    pub changes: Option<PathBuf>,
    /// Show raw user ids in written files.
    pub reveal_ids: bool,
    /// Take the snapshot as of this time if it is later than the data.
    pub as_of: Option<Time>,
    /// Threads and processes.
    pub cluster: Cluster,
    /// Print progress to stderr.
    pub progress: bool,
    /// Set once the workers of every process are connected.
    pub started: Option<Arc<AtomicBool>>,
}

/// What a replay produced.
pub struct ReplayOutcome {
    /// The summary (also in `summary.json`).
    pub summary: Summary,
    /// The snapshot (process 0 only).
    pub snapshot: Option<Snapshot>,
    /// Rendered view tables, as written (process 0 only).
    pub tables: Vec<Table>,
}

/// Replays the spec's input through its views and writes the results (on process 0).
pub fn replay(options: ReplayOptions) -> Result<ReplayOutcome, ReplayError> {
    let start = Instant::now();
    let spec = &options.spec;
    let (key, key_source) = load_key(&spec.input)?;
    let events = options
        .events
        .clone()
        .unwrap_or_else(|| spec.input.events.clone());
    let forget = options.forget.clone().or_else(|| spec.input.forget.clone());
    // Check the files before starting workers, so a bad path fails fast and alone.
    for path in std::iter::once(&events).chain(forget.as_ref()) {
        std::fs::metadata(path).map_err(|source| IngestError::Open {
            path: path.clone(),
            source,
        })?;
    }
    let mut views = ViewConfig::from_spec(spec);
    views.record_changes = options.changes.is_some();
    let cluster = options.cluster.clone();
    let runner = Runner::start(cluster.clone(), views.clone())?;
    if let Some(started) = &options.started {
        started.store(true, Ordering::SeqCst);
    }
    let routing = Routing {
        tick: spec.tick.0,
        shards: cluster.peers(),
        local: cluster.local_workers(),
    };
    let mut failure = None;
    let mut emit = |epoch| {
        if failure.is_none() {
            if let Err(e) = runner.send(epoch) {
                failure = Some(e);
            }
        }
    };
    let mut last_report = Instant::now();
    let mut progress = |read: u64| {
        if last_report.elapsed().as_millis() >= 500 {
            last_report = Instant::now();
            let rate = read as f64 / start.elapsed().as_secs_f64().max(1e-9);
            eprint!("\r  {read} events read, {rate:.0} events/s   ");
            let _ = std::io::stderr().flush();
        }
    };
    let report = ingest(
        IngestOptions {
            input: &spec.input,
            events: &events,
            forget: forget.as_deref(),
            routing,
            key: &key,
            reveal: options.reveal_ids,
            as_of: options.as_of,
            progress: if options.progress {
                Some(&mut progress)
            } else {
                None
            },
        },
        &mut emit,
    );
    if options.progress {
        eprint!("\r{:60}\r", "");
    }
    let report = report?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    let as_of = report.as_of.unwrap_or(0);
    let finished = runner.finish(as_of, report.tombstones.clone())?;
    let elapsed = start.elapsed().as_secs_f64();

    let mut summary = Summary::new(spec.name(), &report.counts);
    summary.as_of = report.as_of.map(format_time);
    summary.workers = cluster.peers();
    summary.processes = cluster.addresses.len().max(1);
    summary.elapsed_s = (elapsed * 1000.0).round() / 1000.0;
    summary.events_per_s = (report.counts.accepted as f64 / elapsed.max(1e-9)).round();
    summary.key_source = key_source.to_string();
    summary.forget_audit = finished.audit.clone();

    let mut names = report.names.clone();
    if let Some(catalog) = &spec.catalog {
        for (item, name) in &catalog.names {
            names.note(*item, name);
        }
    }
    let users = UserNames::new(report.reveal.as_ref()).with_items(&names);
    let tables = match &finished.snapshot {
        Some(snapshot) => output::render(snapshot, &views, spec.k_anonymity, as_of, &users),
        None => Vec::new(),
    };
    if let (Some(dir), Some(_)) = (&options.out, &finished.snapshot) {
        let fail = |e: std::io::Error| OutputError {
            path: dir.clone(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(fail)?;
        for table in &tables {
            let file = format!("{}.csv", table.name);
            output::write_csv(&dir.join(&file), &table.header, table.rows.iter().cloned())?;
            summary.files.push(file);
        }
        output::write_rejections(&dir.join("rejected.csv"), &report.rejections)?;
        summary.files.push("rejected.csv".into());
        output::write_csv(
            &dir.join("tombstones.csv"),
            &["pseudonym"],
            report.tombstones.iter().map(|u| vec![u.to_string()]),
        )?;
        summary.files.push("tombstones.csv".into());
        if let (Some(path), Some(changes)) = (&options.changes, &finished.changes) {
            let forgotten: std::collections::HashSet<_> =
                report.tombstones.iter().copied().collect();
            write_changes(path, changes, &forgotten, &views, &users)?;
        }
        summary.files.push("summary.json".into());
        let path = dir.join("summary.json");
        let json = serde_json::to_string_pretty(&summary).unwrap_or_default();
        std::fs::write(&path, json + "\n").map_err(|e| OutputError {
            path,
            message: e.to_string(),
        })?;
    }
    Ok(ReplayOutcome {
        summary,
        snapshot: finished.snapshot,
        tables,
    })
}

/// Writes the change log, one JSON object a line, in time order. The log is history, but no
/// row of a forgotten user is kept in it: their pseudonyms never appear. (Changes they caused
/// to others while present, e.g. to a percentile threshold, stay as they happened.)
fn write_changes(
    path: &std::path::Path,
    changes: &crate::runtime::Changes,
    forgotten: &std::collections::HashSet<crate::event::UserId>,
    views: &ViewConfig,
    users: &UserNames<'_>,
) -> Result<(), OutputError> {
    let fail = |e: std::io::Error| OutputError {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let file = std::fs::File::create(path).map_err(fail)?;
    let mut writer = std::io::BufWriter::new(file);
    for (row, time, diff) in changes {
        if row
            .users()
            .iter()
            .flatten()
            .any(|user| forgotten.contains(user))
        {
            continue;
        }
        let record = output::change_record(row, *time, *diff, views, users);
        writeln!(writer, "{record}").map_err(fail)?;
    }
    writer.flush().map_err(fail)
}
