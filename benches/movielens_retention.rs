//! Weekly cohort retention alone, on MovieLens 100k (every rating an event), one worker: the
//! time to load the ratings, the latency of a batch of 1,000 new ratings, and of one forget
//! request, each until the retention view reflects it.
//!
//! ```text
//! bash scripts/fetch-movielens        # once: unpacks data/ml-100k/ (never committed)
//! cargo bench --bench movielens_retention -- [--workers W] [--batches B] [--forgets F]
//! ```
//!
//! The ratings are read and pseudonymized up front (not timed); the figures are dataflow time
//! through [`Runner`], as an incremental engine is measured: `load` feeds every rating but the
//! last `B × 1,000` (by time) as one update and waits for the view; each batch is then 1,000 new
//! ratings at their latest time; each forget retracts every rating of one random user (chosen
//! with a fixed seed). Skips with a message when the data is absent.

use anyhow::{bail, Context, Result};
use behave::event::{Event, UserId};
use behave::ingest::Epoch;
use behave::runtime::{Cluster, Runner, ViewConfig};
use behave::views::{Period, RetentionSpec};
use clap::Parser;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;
use support::{percentile, Rng};

mod support;

/// Where `scripts/fetch-movielens` unpacks the ratings.
const RATINGS: &str = "data/ml-100k/ml-100k.inter";
/// Ratings per batch.
const BATCH: usize = 1_000;
/// Seed of the choice of users to forget.
const SEED: u64 = 0x6d6c_3130_306b_0001;

/// Command-line options (`cargo bench` adds `--bench`, accepted and ignored).
#[derive(Parser, Debug)]
#[command(about = "weekly retention on MovieLens 100k")]
struct Options {
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Batches of 1,000 new ratings to time, held back from the load.
    #[arg(long, default_value_t = 10)]
    batches: usize,
    /// Users to forget, one request each.
    #[arg(long, default_value_t = 100)]
    forgets: usize,
    /// Added by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() -> Result<()> {
    let options = Options::parse();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(RATINGS);
    if !path.exists() {
        eprintln!(
            "skipped: {} is absent; run `bash scripts/fetch-movielens` first",
            path.display()
        );
        return Ok(());
    }
    let events = read_ratings(&path)?;
    let held = options.batches * BATCH;
    if events.len() <= held {
        bail!("{} ratings cannot hold back {held}", events.len());
    }
    let (base, new) = events.split_at(events.len() - held);
    let peers = options.workers.max(1);
    let runner = Runner::start(Cluster::local(peers), weekly_retention())?;

    let mut time = base.last().map_or(0, |e| e.time as u64);
    let start = Instant::now();
    runner.sync(epoch(time, peers, base.iter().map(|e| (e.clone(), 1))))?;
    let load_ms = start.elapsed().as_secs_f64() * 1e3;

    let mut batch_ms = Vec::new();
    for batch in new.chunks(BATCH) {
        time = time.max(batch.last().map_or(0, |e| e.time as u64)) + 1;
        let start = Instant::now();
        runner.sync(epoch(time, peers, batch.iter().map(|e| (e.clone(), 1))))?;
        batch_ms.push(start.elapsed().as_secs_f64() * 1e3);
    }

    let mut by_user: BTreeMap<UserId, Vec<Event>> = BTreeMap::new();
    for event in &events {
        by_user.entry(event.user).or_default().push(event.clone());
    }
    let users: Vec<UserId> = by_user.keys().copied().collect();
    let mut forget_ms = Vec::new();
    let mut forgotten = Vec::new();
    let mut rng = Rng(SEED);
    for _ in 0..options.forgets.min(users.len()) {
        let user = loop {
            let candidate = users[(rng.next_u64() % users.len() as u64) as usize];
            if !forgotten.contains(&candidate) {
                break candidate;
            }
        };
        forgotten.push(user);
        time += 1;
        let retract = by_user[&user].iter().map(|e| (e.clone(), -1));
        let start = Instant::now();
        runner.sync(epoch(time, peers, retract))?;
        forget_ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let finished = runner.finish(time as i64, forgotten)?;
    let residual = finished.audit.residual_records + finished.audit.physical_records;

    println!("## Weekly retention on MovieLens 100k ({peers} worker(s))\n");
    println!(
        "| ratings loaded | load ms | batches of {BATCH} | batch p50 ms | batch max ms | forgets | \
         forget p50 ms | forget p99 ms | load / forget p50 | audit residue |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let batch = sorted(batch_ms);
    let forget = sorted(forget_ms);
    println!(
        "| {} | {load_ms:.1} | {} | {:.3} | {:.3} | {} | {:.3} | {:.3} | {:.0} | {residual} |",
        base.len(),
        batch.len(),
        percentile(&batch, 50.0),
        batch.last().copied().unwrap_or(f64::NAN),
        forget.len(),
        percentile(&forget, 50.0),
        percentile(&forget, 99.0),
        load_ms / percentile(&forget, 50.0),
    );
    Ok(())
}

/// The view under test: weekly cohorts by first rating, a return is any rating.
fn weekly_retention() -> ViewConfig {
    ViewConfig {
        retention: vec![(
            "weekly".into(),
            RetentionSpec {
                period: Period::Week,
                utc_offset: 0,
                start_event: None,
                return_event: None,
                unbounded: false,
            },
        )],
        ..ViewConfig::default()
    }
}

/// Every rating as a `rate` event (user pseudonymized as its number, item interned), by time.
fn read_ratings(path: &Path) -> Result<Vec<Event>> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(b'\t')
        .from_path(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut events = Vec::new();
    for (line, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("{}: row {}", path.display(), line + 2))?;
        let field = |i: usize| {
            record
                .get(i)
                .with_context(|| format!("{}: row {}: column {}", path.display(), line + 2, i + 1))
        };
        let user: u64 = field(0)?.parse().context("user id")?;
        let time: f64 = field(3)?.parse().context("timestamp")?;
        events.push(Event::new(UserId(user), time as i64, "rate").with_item(field(1)?));
    }
    events.sort_by_key(|e| e.time);
    Ok(events)
}

/// One epoch at `time` holding `updates`, sharded by user.
fn epoch(time: u64, peers: usize, updates: impl Iterator<Item = (Event, isize)>) -> Epoch {
    let mut shards = vec![Vec::new(); peers];
    for (event, diff) in updates {
        shards[(event.user.0 % peers as u64) as usize].push((event, diff));
    }
    Epoch { time, shards }
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}
