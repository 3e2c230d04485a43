//! Scaling benchmark: every view of every shipped spec on the generated stream, at several
//! worker counts: replay throughput, forget latency (p50, p99) and peak memory for each.
//!
//! ```text
//! cargo bench --bench scaling -- [--events N] [--users U] [--workers W[,W...]]
//!                                 [--forgets F] [--spec FILE[,FILE...]] [--repeat R]
//! ```
//!
//! Each shipped spec (`dataflows/*.toml`, or `--spec`) is retargeted to the generated stream of
//! the foundation benchmark (`target/bench-data/events-N.csv`, same seed and generator): its
//! `[input]` is replaced by the generated file's columns, every event name its views use is
//! mapped to a generated event type ([`EVENT_MAP`]; names without a counterpart, such as
//! opt-out events, match nothing), and the keys that need columns the generated rows lack
//! ([`DROPPED_KEYS`]: property filters, value metrics and filters, the item catalog) are
//! dropped. The spec's tick and every other view parameter are kept. Every measurement runs in a fresh child
//! process so each peak-memory reading (`VmHWM`) belongs to one configuration.
//! Defaults: 10,000,000 events, 100,000 users, workers 1,2,4,8,16, 20 forgets, one run.

mod support;

use anyhow::{bail, Context, Result};
use behave::runtime::ViewConfig;
use behave::spec::Spec;
use clap::Parser;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use support::*;

/// Event names of the shipped specs and the generated event types they stand for.
const EVENT_MAP: [(&str, &str); 8] = [
    ("lesson_view", "view"),
    ("quiz_result", "click"),
    ("completion", "purchase"),
    ("bookmark", "share"),
    ("product_view", "view"),
    ("add_to_cart", "add_to_cart"),
    ("purchase", "purchase"),
    ("rate", "add_to_cart"),
];

/// Keys dropped from every view table: they need columns the generated rows do not have
/// (properties, values, an item catalog).
const DROPPED_KEYS: [&str; 5] = ["where", "metric", "min_value", "catalog", "content_weight"];

/// Targets of the scaling issue, at 16 workers against 1.
const TARGET_SPEEDUP_16: f64 = 10.0;
const TARGET_FORGET_RATIO_16: f64 = 2.0;

/// Command-line options (`cargo bench` adds `--bench`, accepted and ignored).
#[derive(Parser, Debug, Clone)]
#[command(about = "behave scaling benchmark")]
struct Options {
    /// Events to generate.
    #[arg(long, default_value_t = 10_000_000)]
    events: usize,
    /// Users in the population (not all are active).
    #[arg(long, default_value_t = 100_000)]
    users: u32,
    /// Worker counts to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    workers: Vec<usize>,
    /// Users to forget in the latency measurement (plus the heaviest user).
    #[arg(long, default_value_t = 20)]
    forgets: usize,
    /// Specs to measure, comma separated [default: every dataflows/*.toml].
    #[arg(long, value_delimiter = ',')]
    spec: Vec<PathBuf>,
    /// Runs of each replay configuration; the fastest is reported with the median wall time.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Added by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
    /// Internal: run one measurement (a JSON `Job`) and print its result.
    #[arg(long, hide = true)]
    child: Option<String>,
}

/// One measurement, run in a child process.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Job {
    /// A whole `replay()` of the retargeted spec, without output files.
    Replay {
        spec: PathBuf,
        data: PathBuf,
        workers: usize,
    },
    /// Load the stream into a `Runner` with the spec's views, then forget users one at a time.
    Forget {
        spec: PathBuf,
        data: PathBuf,
        events: usize,
        users: u32,
        workers: usize,
        forgets: usize,
    },
}

/// What a child measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Outcome {
    Replay(ReplayResult),
    Forget(ForgetResult),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ReplayResult {
    workers: usize,
    tick: i64,
    accepted: u64,
    /// Wall time around `replay()`.
    wall_s: f64,
    /// Median wall time over the repeated runs (filled in by the parent).
    #[serde(default)]
    median_wall_s: f64,
    /// `events_per_s` of the summary.
    events_per_s: f64,
    /// Rows in the final snapshot.
    rows: usize,
    usage: Usage,
}

fn main() -> Result<()> {
    let options = Options::parse();
    if let Some(job) = &options.child {
        let job: Job = serde_json::from_str(job).context("parsing the --child job")?;
        let outcome = job.run()?;
        println!("{RESULT_PREFIX}{}", serde_json::to_string(&outcome)?);
        return Ok(());
    }
    if options.workers.contains(&0) {
        bail!("--workers takes positive numbers");
    }
    if std::env::var_os(UNSET_KEY_ENV).is_some() {
        bail!("${UNSET_KEY_ENV} must be unset: the benchmark spec uses its own key");
    }
    let specs = if options.spec.is_empty() {
        shipped_specs()?
    } else {
        options.spec.clone()
    };
    let data = data_path(options.events, options.users);
    if !data.exists() {
        eprintln!("writing {}", data.display());
        write_csv(&generate(options.events, options.users, SEED).rows, &data)?;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "## Scaling: {} events, {} users, workers {:?}, {} forgets + the heaviest user, {} cores\n",
        options.events, options.users, options.workers, options.forgets, cores
    );
    if options.workers.iter().any(|&w| w > cores) {
        println!(
            "Note: worker counts above {cores} (this machine's cores) share cores; their \
             figures show overhead, not scaling.\n"
        );
    }
    for spec in &specs {
        if let Err(e) = retarget(spec, &data) {
            println!("{}: skipped ({e:#})\n", spec.display());
            continue;
        }
        let mut rows = Vec::new();
        for &workers in &options.workers {
            eprintln!("{}: {workers} worker(s)", spec.display());
            let replay = repeated(
                &Job::Replay {
                    spec: spec.clone(),
                    data: data.clone(),
                    workers,
                },
                options.repeat,
            )?;
            let forget = match run_child(&Job::Forget {
                spec: spec.clone(),
                data: data.clone(),
                events: options.events,
                users: options.users,
                workers,
                forgets: options.forgets,
            })? {
                Outcome::Forget(r) => r,
                other => bail!("forget child returned {other:?}"),
            };
            rows.push((replay, forget));
        }
        print_table(spec, &rows);
    }
    Ok(())
}

/// Every `dataflows/*.toml`, sorted.
fn shipped_specs() -> Result<Vec<PathBuf>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dataflows");
    let mut specs = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            specs.push(path);
        }
    }
    specs.sort();
    Ok(specs)
}

/// The generated event type standing for a spec's event name; names with no counterpart
/// (opt-out, opt-in, dismiss) stay as they are, and never occur in the generated stream.
fn generated_kind(name: &str) -> String {
    EVENT_MAP
        .iter()
        .find(|(from, _)| *from == name)
        .map_or(name, |(_, kind)| kind)
        .to_string()
}

/// Maps event names (values of keys containing `event`, and `without`) to generated types and
/// drops [`DROPPED_KEYS`], in every table but `[input]`.
fn map_events(value: &mut toml::Value) {
    let rename = |v: &mut toml::Value| match v {
        toml::Value::String(s) => *s = generated_kind(s),
        toml::Value::Array(items) => {
            for item in items {
                if let toml::Value::String(s) = item {
                    *s = generated_kind(s);
                }
            }
        }
        _ => {}
    };
    match value {
        toml::Value::Table(table) => {
            for key in DROPPED_KEYS {
                table.remove(key);
            }
            for (key, v) in table.iter_mut() {
                if key.contains("event") || key == "without" {
                    rename(v);
                } else {
                    map_events(v);
                }
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(map_events),
        _ => {}
    }
}

/// The shipped spec at `path` with its input replaced by the generated stream at `data`.
fn retarget(path: &Path, data: &Path) -> Result<Spec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    table.remove("input");
    for (_, value) in table.iter_mut() {
        map_events(value);
    }
    let name = path
        .file_stem()
        .map_or("bench".into(), |s| s.to_string_lossy().into_owned());
    table.insert("name".into(), toml::Value::String(name));
    let mut input = toml::Table::new();
    for (key, value) in [
        ("events", data.display().to_string()),
        ("user", "user".into()),
        ("time", "time".into()),
        ("event", "event".into()),
        ("item", "item".into()),
        ("key", "bench".into()),
        ("key_env", UNSET_KEY_ENV.into()),
    ] {
        input.insert(key.into(), toml::Value::String(value));
    }
    table.insert("input".into(), toml::Value::Table(input));
    let text = toml::to_string(&table).context("writing the retargeted spec")?;
    Spec::parse(&text, path).with_context(|| format!("retargeting {}", path.display()))
}

impl Job {
    fn run(&self) -> Result<Outcome> {
        Ok(match self {
            Job::Replay {
                spec,
                data,
                workers,
            } => Outcome::Replay(run_replay(&retarget(spec, data)?, *workers)?),
            Job::Forget {
                spec,
                data,
                events,
                users,
                workers,
                forgets,
            } => {
                let spec = retarget(spec, data)?;
                Outcome::Forget(run_forget(
                    *events,
                    *users,
                    *workers,
                    spec.tick.0,
                    *forgets,
                    ViewConfig::from_spec(&spec),
                )?)
            }
        })
    }
}

fn run_replay(spec: &Spec, workers: usize) -> Result<ReplayResult> {
    let tick = spec.tick.0;
    let meter = Meter::start();
    let start = Instant::now();
    let outcome = replay_in_memory(spec.clone(), workers)?;
    let wall_s = start.elapsed().as_secs_f64();
    Ok(ReplayResult {
        workers,
        tick,
        accepted: outcome.summary.accepted,
        wall_s,
        median_wall_s: wall_s,
        events_per_s: outcome.summary.events_per_s,
        rows: outcome.snapshot.as_ref().map_or(0, |s| s.len()),
        usage: meter.finish(),
    })
}

/// Runs a replay job `repeat` times: the fastest run, with the median wall time of all.
fn repeated(job: &Job, repeat: usize) -> Result<ReplayResult> {
    let mut runs = Vec::new();
    for _ in 0..repeat.max(1) {
        match run_child(job)? {
            Outcome::Replay(r) => runs.push(r),
            other => bail!("replay child returned {other:?}"),
        }
    }
    runs.sort_by(|a, b| a.wall_s.total_cmp(&b.wall_s));
    let median = runs[runs.len() / 2].wall_s;
    let mut best = runs.swap_remove(0);
    best.median_wall_s = median;
    Ok(best)
}

fn print_table(spec: &Path, rows: &[(ReplayResult, ForgetResult)]) {
    let name = spec.file_name().map_or_else(
        || spec.display().to_string(),
        |n| n.to_string_lossy().into(),
    );
    let tick = rows.first().map_or(0, |(r, _)| r.tick);
    println!("### {name} (every view; tick {tick} s)\n");
    println!(
        "| workers | wall s (median) | events/s | speed-up | CPU s | CPU/wall | peak RSS MiB | forget p50 ms | p99 ms | heaviest ms | p50 vs 1 worker | residual |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let base = rows.first();
    let p50 = |f: &ForgetResult| {
        let mut sorted = f.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        (percentile(&sorted, 50.0), percentile(&sorted, 99.0))
    };
    for (replay, forget) in rows {
        let (f50, f99) = p50(forget);
        let speedup = base.map_or(f64::NAN, |(b, _)| replay.events_per_s / b.events_per_s);
        let ratio = base.map_or(f64::NAN, |(_, b)| f50 / p50(b).0);
        println!(
            "| {} | {:.2} ({:.2}) | {:.0} | {:.2}× | {:.1} | {:.2} | {:.0} | {:.2} | {:.2} | {:.1} | {:.2}× | {} |",
            replay.workers,
            replay.wall_s,
            replay.median_wall_s,
            replay.events_per_s,
            speedup,
            replay.usage.cpu_s,
            replay.usage.cpu_s / replay.wall_s.max(1e-9),
            replay.usage.peak_kib as f64 / 1024.0,
            f50,
            f99,
            forget.heaviest_ms,
            ratio,
            forget.residual_records
        );
    }
    if let Some((last, forget)) = rows.last() {
        if let Some((first, first_forget)) = base.filter(|_| rows.len() > 1) {
            let speedup = last.events_per_s / first.events_per_s;
            let ratio = p50(forget).0 / p50(first_forget).0;
            println!(
                "\n{} workers against 1: throughput {:.2}× (target at 16: ≥ {TARGET_SPEEDUP_16}×), \
                 forget p50 {:.2}× (target at 16: ≤ {TARGET_FORGET_RATIO_16}×)",
                last.workers, speedup, ratio
            );
        }
    }
    println!();
}
