//! Foundation benchmark: replay throughput, ingest-only throughput, the effect of the epoch
//! length (`tick`), peak memory per live event, and forget latency against a rebuild.
//!
//! ```text
//! cargo bench --bench foundation -- [--events N] [--users U] [--workers W[,W...]]
//!                                    [--forgets F] [--tick SECS[,SECS...]] [--repeat R]
//!                                    [--views foundation|all]
//! ```
//!
//! `--views all` adds three segments (rule: 2+ purchases in 7 days; percentile 90 over 7 days;
//! dormant 14 days) and two retention tables (daily; weekly from view to purchase) to sessions
//! and engagement.
//!
//! The parent process generates a seeded, deterministic event file
//! (`target/bench-data/events-N.csv`, reused when present), then runs every measurement in a
//! fresh child process (this binary re-executed with a hidden `--child` flag), so that each
//! peak-memory reading (`VmHWM`) belongs to one configuration only. Children print one
//! `BENCH-RESULT <json>` line; the parent prints Markdown tables of the results. With
//! `--repeat R` the throughput tables show the fastest of R runs and the median wall time.
//! Defaults: 1,000,000 events, 100,000 users, workers 1,2, 100 forgets, ticks
//! 60,3600,21600,86400 (forget latency is measured at the spec's default tick), one run.

mod support;

use anyhow::{bail, Context, Result};
use behave::ingest::{ingest, IngestOptions, Routing};
use behave::runtime::ViewConfig;
use behave::spec::{Spec, DEFAULT_TICK};
use clap::Parser;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;
use support::*;

/// Targets the figures are held against.
const TARGET_EVENTS_PER_S: f64 = 1_000_000.0;
const TARGET_FORGET_P50_MS: f64 = 5.0;
const TARGET_BYTES_PER_EVENT: f64 = 300.0;

/// Command-line options (`cargo bench` adds `--bench`, accepted and ignored).
#[derive(Parser, Debug, Clone)]
#[command(about = "behave foundation benchmark")]
struct Options {
    /// Events to generate.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Users in the population (not all are active).
    #[arg(long, default_value_t = 100_000)]
    users: u32,
    /// Worker counts to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    workers: Vec<usize>,
    /// Users to forget in the latency measurement.
    #[arg(long, default_value_t = 100)]
    forgets: usize,
    /// Epoch lengths in seconds to measure replay throughput at, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "60,3600,21600,86400")]
    tick: Vec<i64>,
    /// Runs of each throughput configuration; the median is reported.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Which views to maintain.
    #[arg(long, value_enum, default_value_t = Views::Foundation)]
    views: Views,
    /// Added by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
    /// Internal: run one measurement (a JSON `Job`) and print its result.
    #[arg(long, hide = true)]
    child: Option<String>,
}

fn main() -> Result<()> {
    let options = Options::parse();
    if let Some(job) = &options.child {
        let job: Job = serde_json::from_str(job).context("parsing the --child job")?;
        let outcome = job.run()?;
        println!("{RESULT_PREFIX}{}", serde_json::to_string(&outcome)?);
        return Ok(());
    }
    if options.workers.contains(&0) || options.tick.iter().any(|&t| t < 1) {
        bail!("--workers and --tick take positive numbers");
    }
    if std::env::var_os(UNSET_KEY_ENV).is_some() {
        bail!("${UNSET_KEY_ENV} must be unset: the benchmark spec uses its own key");
    }
    let report = measure_all(&options)?;
    report.print(&options);
    Ok(())
}

/// Facts about the generated data, for the report.
#[derive(Debug)]
struct DataFacts {
    path: PathBuf,
    bytes: u64,
    generated_s: Option<f64>,
    sessions: u64,
    active_users: usize,
    heaviest_user_events: usize,
    median_events_per_active_user: usize,
    /// Per measured tick: the tick, its epochs and the reduce work it implies.
    ticks: Vec<TickFacts>,
}

/// How a tick cuts the data, and how much history the per-user reduces re-read because of it.
#[derive(Debug)]
struct TickFacts {
    tick: i64,
    epochs: usize,
    /// For every epoch and every user with events in it, that user's events so far, summed and
    /// divided by the events: the values a reduce over each user's whole history reads per
    /// input event.
    rereads_per_event: f64,
}

impl TickFacts {
    fn new(rows: &[Row], users: u32, tick: i64) -> TickFacts {
        let routing = Routing::single(tick, 1);
        let mut history = vec![0u64; users as usize];
        let mut touched: Vec<u32> = Vec::new();
        let mut last_epoch = vec![u64::MAX; users as usize];
        let (mut epochs, mut reads, mut current) = (0, 0u64, None);
        let mut flush = |touched: &mut Vec<u32>, history: &[u64]| {
            reads += touched.drain(..).map(|u| history[u as usize]).sum::<u64>();
        };
        for row in rows {
            let epoch = routing.epoch(row.time);
            if current != Some(epoch) {
                flush(&mut touched, &history);
                current = Some(epoch);
                epochs += 1;
            }
            history[row.user as usize] += 1;
            if last_epoch[row.user as usize] != epoch {
                last_epoch[row.user as usize] = epoch;
                touched.push(row.user);
            }
        }
        flush(&mut touched, &history);
        TickFacts {
            tick,
            epochs,
            rereads_per_event: reads as f64 / rows.len().max(1) as f64,
        }
    }
}

/// Generates the data (always, for its facts) and writes the CSV if it is absent.
fn prepare_data(options: &Options) -> Result<DataFacts> {
    let path = data_path(options.events, options.users);
    let start = Instant::now();
    let data = generate(options.events, options.users, SEED);
    let mut generated_s = None;
    if !path.exists() {
        eprintln!("writing {}", path.display());
        write_csv(&data.rows, &path)?;
        generated_s = Some(start.elapsed().as_secs_f64());
    }
    let mut per_user = vec![0usize; options.users as usize];
    for row in &data.rows {
        per_user[row.user as usize] += 1;
    }
    let mut active: Vec<usize> = per_user.into_iter().filter(|&n| n > 0).collect();
    active.sort_unstable();
    Ok(DataFacts {
        bytes: std::fs::metadata(&path)?.len(),
        path,
        generated_s,
        sessions: data.sessions,
        active_users: active.len(),
        heaviest_user_events: active.last().copied().unwrap_or(0),
        median_events_per_active_user: active.get(active.len() / 2).copied().unwrap_or(0),
        ticks: options
            .tick
            .iter()
            .map(|&tick| TickFacts::new(&data.rows, options.users, tick))
            .collect(),
    })
}

// ---------------------------------------------------------------------------------------------
// Child jobs
// ---------------------------------------------------------------------------------------------

/// The view sets a benchmark can maintain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
enum Views {
    /// Sessions and engagement.
    Foundation,
    /// Sessions, engagement, three segments and two retention tables.
    All,
}

/// The spec tables `--views all` adds.
const SEGMENTS_AND_RETENTION: &str = r#"
[[segment]]
name = "repeat_buyers"
kind = "rule"
event = "purchase"
at_least = 2
within = "7d"

[[segment]]
name = "top_decile"
kind = "percentile"
percentile = 90
within = "7d"

[[segment]]
name = "dormant_14d"
kind = "dormant"
within = "14d"

[[retention]]
name = "daily"
period = "day"

[[retention]]
name = "weekly_buyers"
period = "week"
start_event = "view"
return_event = "purchase"
"#;

/// One measurement, run in a child process.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Job {
    /// `ingest()` alone, dropping the epochs.
    Ingest {
        data: PathBuf,
        shards: usize,
        tick: i64,
    },
    /// A whole `replay()` without output files.
    Replay {
        data: PathBuf,
        workers: usize,
        tick: i64,
        views: Views,
    },
    /// Load into a `Runner`, then forget users one at a time.
    Forget {
        events: usize,
        users: u32,
        workers: usize,
        tick: i64,
        forgets: usize,
        views: Views,
    },
}

/// What a child measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Outcome {
    Ingest(IngestResult),
    Replay(ReplayResult),
    Forget(ForgetResult),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct IngestResult {
    shards: usize,
    tick: i64,
    accepted: u64,
    wall_s: f64,
    /// Median wall time over the repeated runs (filled in by the parent).
    #[serde(default)]
    median_wall_s: f64,
    usage: Usage,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ReplayResult {
    workers: usize,
    tick: i64,
    accepted: u64,
    rejected: u64,
    /// Wall time around `replay()`.
    wall_s: f64,
    /// Median wall time over the repeated runs (filled in by the parent).
    #[serde(default)]
    median_wall_s: f64,
    /// `events_per_s` of the summary.
    events_per_s: f64,
    /// Sessions and engagement rows in the snapshot.
    rows: usize,
    usage: Usage,
}

impl Job {
    fn run(&self) -> Result<Outcome> {
        Ok(match self {
            Job::Ingest { data, shards, tick } => {
                Outcome::Ingest(run_ingest(data, *shards, *tick)?)
            }
            Job::Replay {
                data,
                workers,
                tick,
                views,
            } => Outcome::Replay(run_replay(data, *workers, *tick, *views)?),
            Job::Forget {
                events,
                users,
                workers,
                tick,
                forgets,
                views,
            } => Outcome::Forget(run_forget(
                *events,
                *users,
                *workers,
                *tick,
                *forgets,
                bench_views(*views)?,
            )?),
        })
    }
}

/// The benchmark spec: the generated CSV, sessions and engagement (and with [`Views::All`]
/// segments and retention), `key = "bench"`.
fn bench_spec(data: &Path, tick: i64, views: Views) -> Result<Spec> {
    let more = match views {
        Views::Foundation => "",
        Views::All => SEGMENTS_AND_RETENTION,
    };
    let events = toml::Value::String(data.display().to_string());
    let text = format!(
        r#"
name = "bench"
tick = {tick}

[input]
events = {events}
user = "user"
time = "time"
event = "event"
item = "item"
key = "bench"
key_env = "{UNSET_KEY_ENV}"

[sessions]
gap = "30m"

[engagement]
utc_offset = "+00:00"
{more}"#
    );
    Spec::parse(&text, Path::new("<bench spec>")).context("the benchmark spec is invalid")
}

/// The views a measurement maintains.
fn bench_views(views: Views) -> Result<ViewConfig> {
    let spec = bench_spec(Path::new("<generated>"), DEFAULT_TICK, views)?;
    Ok(ViewConfig::from_spec(&spec))
}

fn run_ingest(data: &Path, shards: usize, tick: i64) -> Result<IngestResult> {
    let spec = bench_spec(data, tick, Views::Foundation)?;
    let meter = Meter::start();
    let start = Instant::now();
    let report = ingest(
        IngestOptions {
            input: &spec.input,
            events: data,
            forget: None,
            routing: Routing::single(tick, shards),
            key: b"bench",
            reveal: false,
            as_of: None,
            progress: None,
        },
        &mut |epoch| drop(epoch),
    )?;
    let wall_s = start.elapsed().as_secs_f64();
    Ok(IngestResult {
        shards,
        tick,
        accepted: report.counts.accepted,
        wall_s,
        median_wall_s: wall_s,
        usage: meter.finish(),
    })
}

fn run_replay(data: &Path, workers: usize, tick: i64, views: Views) -> Result<ReplayResult> {
    let spec = bench_spec(data, tick, views)?;
    let meter = Meter::start();
    let start = Instant::now();
    let outcome = replay_in_memory(spec, workers)?;
    let wall_s = start.elapsed().as_secs_f64();
    let summary = &outcome.summary;
    Ok(ReplayResult {
        workers,
        tick,
        accepted: summary.accepted,
        rejected: summary.rejected,
        wall_s,
        median_wall_s: wall_s,
        events_per_s: summary.events_per_s,
        rows: outcome.snapshot.as_ref().map_or(0, |s| s.len()),
        usage: meter.finish(),
    })
}

// ---------------------------------------------------------------------------------------------
// Parent: running children and reporting
// ---------------------------------------------------------------------------------------------

/// Runs `job` `repeat` times and returns the fastest run with the median wall time of all.
///
/// The fastest run is reported because other load on a shared machine only ever slows a run
/// down; the median shows how much it did.
fn repeated<T>(
    job: &Job,
    repeat: usize,
    pick: impl Fn(Outcome) -> Option<T>,
    wall: impl Fn(&T) -> f64,
) -> Result<(T, f64)> {
    let mut runs = Vec::new();
    for _ in 0..repeat.max(1) {
        let outcome = run_child(job)?;
        runs.push(pick(outcome).with_context(|| format!("child {job:?} measured something else"))?);
    }
    runs.sort_by(|a, b| wall(a).total_cmp(&wall(b)));
    let median = wall(&runs[runs.len() / 2]);
    let best = runs.swap_remove(0);
    Ok((best, median))
}

/// Every result of one benchmark invocation.
struct Report {
    data: DataFacts,
    ingest: Vec<IngestResult>,
    replay: Vec<ReplayResult>,
    forget: Vec<ForgetResult>,
}

fn measure_all(options: &Options) -> Result<Report> {
    let data = prepare_data(options)?;
    let default_tick = if options.tick.contains(&DEFAULT_TICK) {
        DEFAULT_TICK
    } else {
        options.tick[0]
    };
    let max_workers = options.workers.iter().copied().max().unwrap_or(1);
    let mut report = Report {
        data,
        ingest: Vec::new(),
        replay: Vec::new(),
        forget: Vec::new(),
    };
    let path = report.data.path.clone();
    for &tick in &options.tick {
        eprintln!("ingest only: tick {tick}s");
        let job = Job::Ingest {
            data: path.clone(),
            shards: max_workers,
            tick,
        };
        let runs = repeated(
            &job,
            options.repeat,
            |o| match o {
                Outcome::Ingest(r) => Some(r),
                _ => None,
            },
            |r| r.wall_s,
        )?;
        let (mut best, median) = runs;
        best.median_wall_s = median;
        report.ingest.push(best);
    }
    for &workers in &options.workers {
        for &tick in &options.tick {
            eprintln!("replay: {workers} worker(s), tick {tick}s");
            let job = Job::Replay {
                data: path.clone(),
                workers,
                tick,
                views: options.views,
            };
            let runs = repeated(
                &job,
                options.repeat,
                |o| match o {
                    Outcome::Replay(r) => Some(r),
                    _ => None,
                },
                |r| r.wall_s,
            )?;
            let (mut best, median) = runs;
            best.median_wall_s = median;
            report.replay.push(best);
        }
    }
    for &workers in &options.workers {
        eprintln!("forget: {workers} worker(s), {} users", options.forgets);
        let job = Job::Forget {
            events: options.events,
            users: options.users,
            workers,
            tick: default_tick,
            forgets: options.forgets,
            views: options.views,
        };
        match run_child(&job)? {
            Outcome::Forget(r) => report.forget.push(r),
            other => bail!("forget child returned {other:?}"),
        }
    }
    Ok(report)
}

fn per_event(kib: u64, events: u64) -> f64 {
    kib as f64 * 1024.0 / events.max(1) as f64
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "missed"
    }
}

impl Report {
    fn print(&self, options: &Options) {
        println!("Views: {:?}\n", options.views);
        self.print_data(options);
        self.print_ingest();
        self.print_replay();
        self.print_ticks(options);
        self.print_forget();
        self.print_targets();
    }

    fn print_data(&self, options: &Options) {
        let d = &self.data;
        println!("## Data\n");
        println!(
            "- file: `{}` ({:.1} MiB)",
            d.path.display(),
            d.bytes as f64 / 1048576.0
        );
        match d.generated_s {
            Some(s) => println!("- generated and written in {s:.2} s"),
            None => println!("- reused (already present)"),
        }
        println!(
            "- {} events, {} users ({} active), {} sessions drawn",
            options.events, options.users, d.active_users, d.sessions
        );
        println!(
            "- events per active user: median {}, heaviest {}\n",
            d.median_events_per_active_user, d.heaviest_user_events
        );
    }

    fn print_ticks(&self, options: &Options) {
        println!("## Throughput against tick (replay events/s, fastest run)\n");
        let workers: Vec<String> = options
            .workers
            .iter()
            .map(|w| format!(" {w} worker(s) |"))
            .collect();
        println!(
            "| tick s | epochs | history re-reads/event |{}",
            workers.concat()
        );
        println!("|---:|---:|---:|{}", "---:|".repeat(options.workers.len()));
        for facts in &self.data.ticks {
            let rates: Vec<String> = options
                .workers
                .iter()
                .map(|&w| {
                    self.replay
                        .iter()
                        .find(|r| r.workers == w && r.tick == facts.tick)
                        .map_or(" – |".to_string(), |r| {
                            format!(" {:.0} |", r.events_per_s)
                        })
                })
                .collect();
            println!(
                "| {} | {} | {:.1} |{}",
                facts.tick,
                facts.epochs,
                facts.rereads_per_event,
                rates.concat()
            );
        }
        println!();
    }

    fn print_ingest(&self) {
        println!(
            "## Ingest only (CSV parse, HMAC pseudonymization, ordering, epochs; no dataflow)\n"
        );
        println!(
            "| tick s | wall s (median) | events/s | CPU s | peak RSS MiB | peak bytes/event |"
        );
        println!("|---:|---:|---:|---:|---:|---:|");
        for r in &self.ingest {
            println!(
                "| {} | {:.2} ({:.2}) | {:.0} | {:.2} | {:.0} | {:.0} |",
                r.tick,
                r.wall_s,
                r.median_wall_s,
                r.accepted as f64 / r.wall_s,
                r.usage.cpu_s,
                mib(r.usage.peak_kib),
                per_event(r.usage.peak_kib, r.accepted)
            );
        }
        println!();
    }

    fn print_replay(&self) {
        println!(
            "## Replay (ingest + sessions + engagement dataflow + snapshot; fastest of the runs)\n"
        );
        println!(
            "| workers | tick s | accepted | wall s (median) | events/s (summary) | CPU s | CPU/wall | \
             peak RSS MiB | bytes/live event | net of baseline |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &self.replay {
            let net = r.usage.peak_kib.saturating_sub(r.usage.baseline_kib);
            println!(
                "| {} | {} | {} | {:.2} ({:.2}) | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} |",
                r.workers,
                r.tick,
                r.accepted,
                r.wall_s,
                r.median_wall_s,
                r.events_per_s,
                r.usage.cpu_s,
                r.usage.cpu_s / r.wall_s,
                mib(r.usage.peak_kib),
                per_event(r.usage.peak_kib, r.accepted),
                per_event(net, r.accepted)
            );
        }
        println!();
    }

    fn print_forget(&self) {
        println!("## Forget latency (Runner fed directly; one sync per forgotten user)\n");
        println!(
            "| workers | tick s | live events | load = rebuild s | forgets | p50 ms | p99 ms | \
             max ms | heaviest user ms (events) | rebuild / p50 | dataflow bytes/event | residual |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in &self.forget {
            let mut sorted = r.latencies_ms.clone();
            sorted.sort_by(f64::total_cmp);
            let p50 = percentile(&sorted, 50.0);
            let net = r.usage.peak_kib.saturating_sub(r.usage.baseline_kib);
            println!(
                "| {} | {} | {} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {:.2} ({}) | {:.0} | {:.0} | {} |",
                r.workers,
                r.tick,
                r.live_events,
                r.load_s,
                sorted.len(),
                p50,
                percentile(&sorted, 99.0),
                sorted.last().copied().unwrap_or(f64::NAN),
                r.heaviest_ms,
                r.heaviest_events,
                r.load_s * 1e3 / p50,
                per_event(net, r.live_events),
                r.residual_records
            );
        }
        println!();
    }

    fn print_targets(&self) {
        println!("## Targets\n");
        let best_rate = self
            .replay
            .iter()
            .filter(|r| r.workers == 2)
            .map(|r| r.events_per_s)
            .fold(f64::NAN, f64::max);
        if !best_rate.is_nan() {
            println!(
                "- throughput on 2 workers >= {TARGET_EVENTS_PER_S:.0} events/s: best {best_rate:.0} \
                 ({:.2}x of target): {}",
                best_rate / TARGET_EVENTS_PER_S,
                met(best_rate >= TARGET_EVENTS_PER_S)
            );
        }
        for r in &self.forget {
            let mut sorted = r.latencies_ms.clone();
            sorted.sort_by(f64::total_cmp);
            let p50 = percentile(&sorted, 50.0);
            println!(
                "- forget p50 < {TARGET_FORGET_P50_MS} ms ({} worker(s)): {p50:.2} ms: {}",
                r.workers,
                met(p50 < TARGET_FORGET_P50_MS)
            );
        }
        for r in &self.replay {
            let bytes = per_event(r.usage.peak_kib, r.accepted);
            println!(
                "- peak memory < {TARGET_BYTES_PER_EVENT} bytes/live event ({} worker(s), tick {}s): \
                 {bytes:.0}: {}",
                r.workers,
                r.tick,
                met(bytes < TARGET_BYTES_PER_EVENT)
            );
        }
    }
}
