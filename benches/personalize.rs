//! Personalization benchmark: similarity, item similarity and recommendations on MovieLens 100k
//! and on a generated stream of interactions. For each data set and worker count, in one child
//! process: build the views from scratch on the first 90% of the interactions (by time, in one
//! epoch), stream the last 10% through the maintained views one epoch (day) at a time
//! (throughput), forget random users one at a time
//! (latency until every view reflects it), audit the arrangements, then rebuild the views from
//! scratch without the forgotten users in the same binary (the ratio). Peak memory (`VmHWM`) is
//! read before the rebuild.
//!
//! ```text
//! cargo bench --bench personalize -- [--workers W[,W...]] [--forgets F] [--events N]
//!                                     [--users U] [--items I] [--cap C] [--skip-movielens]
//!                                     [--skip-generated]
//! ```
//!
//! MovieLens needs `bash scripts/fetch-movielens` first; without `data/ml-100k/` it is skipped
//! with a message. The generated stream has `--events` (user, item) ratings, users and items
//! drawn from Zipf distributions (0.5 and 0.6), over 30 days, with `max_item_users = --cap`.

use anyhow::{bail, Context, Result};
use behave::event::{Event, Sym, UserId};
use behave::ingest::{Epoch, Routing};
use behave::runtime::{Cluster, Runner, ViewConfig};
use behave::spec::Spec;
use behave::views::recommend::RecommendParams;
use behave::views::similarity::{Interactions, ItemSimilarityParams, SimilarityParams};
use clap::Parser;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;
use support::{
    cpu_nanos, mib, percentile, run_child, send_in_epochs, Discrete, Meter, Rng, Usage,
    RESULT_PREFIX,
};

mod support;

const MOVIELENS_SPEC: &str = "dataflows/movielens.toml";
const SEED: u64 = 0x5eed_0000_0000_0003;
const FORGET_SEED: u64 = 0xf0f6_0000_0000_0004;
const T0: i64 = 1_709_251_200;
const DAY: i64 = 86_400;
/// The targets of the issue.
const TARGET_FORGET_P50_MS: f64 = 20.0;
const TARGET_RATIO: f64 = 500.0;

#[derive(Parser, Debug, Clone)]
#[command(about = "behave personalization benchmark")]
struct Options {
    /// Worker counts, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    workers: Vec<usize>,
    /// Users to forget.
    #[arg(long, default_value_t = 100)]
    forgets: usize,
    /// Interactions in the generated stream.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Users of the generated stream.
    #[arg(long, default_value_t = 100_000)]
    users: u32,
    /// Items of the generated stream.
    #[arg(long, default_value_t = 100_000)]
    items: u32,
    /// `max_item_users` (and `max_user_items`) of the generated stream.
    #[arg(long, default_value_t = 100)]
    cap: u64,
    /// Skip MovieLens.
    #[arg(long)]
    skip_movielens: bool,
    /// Skip the generated stream.
    #[arg(long)]
    skip_generated: bool,
    /// Leave views out (`item_similarity`, `recommendations`), to see what each one costs.
    #[arg(long, value_delimiter = ',')]
    without: Vec<String>,
    /// Added by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
    /// Internal: run one job (JSON) and print its result.
    #[arg(long, hide = true)]
    child: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum Job {
    Movielens {
        workers: usize,
        forgets: usize,
        without: Vec<String>,
    },
    Generated {
        events: usize,
        users: u32,
        items: u32,
        cap: u64,
        workers: usize,
        forgets: usize,
        without: Vec<String>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Outcome {
    data: String,
    workers: usize,
    events: usize,
    /// Build from scratch on the first 90%, seconds.
    build_s: f64,
    /// Events streamed after the build, and their rate with every view maintained.
    new_events: usize,
    new_events_per_s: f64,
    /// Forget latencies, ms, in forget order.
    latencies_ms: Vec<f64>,
    /// CPU time of each forget (all threads), ms, in forget order.
    forget_cpu_ms: Vec<f64>,
    /// Rebuild from scratch of all surviving events, seconds.
    rebuild_s: f64,
    /// Records of forgotten users left in the audited arrangements.
    residual_records: usize,
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
    let mut outcomes = Vec::new();
    if !options.skip_movielens {
        if Path::new("data/ml-100k/ml-100k.inter").exists() {
            for &workers in &options.workers {
                outcomes.push(run_child(&Job::Movielens {
                    workers,
                    forgets: options.forgets,
                    without: options.without.clone(),
                })?);
            }
        } else {
            eprintln!(
                "personalize: data/ml-100k/ is absent, skipping MovieLens \
                 (run `bash scripts/fetch-movielens`)"
            );
        }
    }
    if !options.skip_generated {
        for &workers in &options.workers {
            outcomes.push(run_child(&Job::Generated {
                events: options.events,
                users: options.users,
                items: options.items,
                cap: options.cap,
                workers,
                forgets: options.forgets,
                without: options.without.clone(),
            })?);
        }
    }
    print_table(&outcomes);
    Ok(())
}

impl Job {
    fn run(&self) -> Result<Outcome> {
        match *self {
            Job::Movielens {
                workers,
                forgets,
                ref without,
            } => {
                let spec = Spec::load(Path::new(MOVIELENS_SPEC))?;
                let (events, _) = behave::evaluate::read_events(&spec)?;
                let views = leave_out(ViewConfig::from_spec(&spec), without);
                measure(
                    "MovieLens 100k",
                    events,
                    views,
                    spec.tick.0,
                    workers,
                    forgets,
                )
            }
            Job::Generated {
                events,
                users,
                items,
                cap,
                workers,
                forgets,
                ref without,
            } => {
                let data = generate(events, users, items);
                let name = format!("generated {}k", events / 1_000);
                let views = leave_out(generated_views(cap), without);
                measure(&name, data, views, DAY, workers, forgets)
            }
        }
    }
}

fn leave_out(mut views: ViewConfig, without: &[String]) -> ViewConfig {
    for view in without {
        match view.as_str() {
            "item_similarity" => views.item_similarity = None,
            "recommendations" => views.recommendations = None,
            _ => {}
        }
    }
    views
}

/// The views of the generated stream: every rating an interaction, k = 20 neighbours, n = 10.
fn generated_views(cap: u64) -> ViewConfig {
    let mut views = ViewConfig::sessions_and_engagement(1);
    views.sessions = None;
    views.engagement = None;
    views.similarity = Some(SimilarityParams {
        interactions: Interactions {
            events: vec![Sym::of("rate")],
            min_value: None,
        },
        k: 20,
        max_item_users: cap,
        consent: None,
    });
    views.similarity_table = true;
    views.item_similarity = Some(ItemSimilarityParams {
        k: 20,
        max_user_items: cap.max(2) * 5,
    });
    views.recommendations = Some(RecommendParams {
        n: 10,
        dismiss: None,
        popular_within: None,
        catalog: None,
        content_weight: 0,
    });
    views
}

/// `events` ratings: users Zipf(0.5) over `users`, items Zipf(0.6) over `items`, times uniform
/// over 30 days; sorted by time.
fn generate(events: usize, users: u32, items: u32) -> Vec<Event> {
    let mut rng = Rng(SEED);
    let user_of = Discrete::zipf(users as usize, 0.5);
    let item_of = Discrete::zipf(items as usize, 0.6);
    // Shuffle ranks over ids so heavy users and items are not the small numbers.
    let shuffled = |n: u32, rng: &mut Rng| {
        let mut ids: Vec<u32> = (0..n).collect();
        for i in (1..ids.len()).rev() {
            ids.swap(i, rng.below(i as u64 + 1) as usize);
        }
        ids
    };
    let user_ids = shuffled(users, &mut rng);
    let item_syms: Vec<Sym> = shuffled(items, &mut rng)
        .into_iter()
        .map(|i| Sym::of(&format!("item-{i:06}")))
        .collect();
    let mut out: Vec<Event> = (0..events)
        .map(|_| {
            let user = user_ids[user_of.sample(&mut rng)];
            let item = item_syms[item_of.sample(&mut rng)];
            let time = T0 + rng.below(30 * DAY as u64) as i64;
            let mut e = Event::new(UserId(u64::from(user)), time, "rate");
            e.item = Some(item);
            e
        })
        .collect();
    out.sort();
    out
}

/// Sends `events` in one epoch at the epoch of the last one and waits for it: a build from
/// scratch. Returns the epoch's time.
fn load_at_once(runner: &Runner, events: &[Event], routing: &Routing) -> Result<u64> {
    let last = events
        .iter()
        .map(|e| e.time)
        .max()
        .context("no events to load")?;
    let time = routing.epoch(last);
    let mut shards = vec![Vec::new(); routing.shards];
    for event in events {
        shards[routing.shard(event.user)].push((event.clone(), 1));
    }
    runner.sync(Epoch { time, shards })?;
    Ok(time)
}

fn measure(
    name: &str,
    mut events: Vec<Event>,
    views: ViewConfig,
    tick: i64,
    workers: usize,
    forgets: usize,
) -> Result<Outcome> {
    events.sort_by_key(|e| e.time);
    let total = events.len();
    let split = total * 9 / 10;
    let routing = Routing::single(tick, workers);
    let meter = Meter::start();
    let runner = Runner::start(Cluster::local(workers), views.clone())?;
    let start = Instant::now();
    let loaded_at = load_at_once(&runner, &events[..split], &routing)?;
    let build_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let streamed_at = send_in_epochs(
        &runner,
        events[split..].iter().cloned(),
        &routing,
        loaded_at + 1,
    )?;
    let stream_s = start.elapsed().as_secs_f64();
    // Forget random users with at least one interaction.
    let mut by_user: BTreeMap<UserId, Vec<Event>> = BTreeMap::new();
    for e in &events {
        by_user.entry(e.user).or_default().push(e.clone());
    }
    let mut candidates: Vec<UserId> = by_user.keys().copied().collect();
    Rng(FORGET_SEED).choose(&mut candidates, forgets);
    let count = candidates.len();
    let mut latencies_ms = Vec::with_capacity(count);
    let mut forget_cpu_ms = Vec::with_capacity(count);
    // With PERSONALIZE_PHASES set, the forget phase's bounds on the monotonic clock (what
    // `perf record -k CLOCK_MONOTONIC` stamps samples with), to profile it alone with
    // `perf report --time START,END`.
    let phases = std::env::var_os("PERSONALIZE_PHASES").is_some();
    if phases {
        eprintln!("forget phase starts at {:?}", Instant::now());
    }
    forget_phase_starts();
    for (i, user) in candidates.iter().enumerate() {
        let time = streamed_at + 1 + i as u64;
        let mut shards = vec![Vec::new(); workers];
        for e in &by_user[user] {
            shards[routing.shard(*user)].push((e.clone(), -1));
        }
        let cpu = cpu_nanos();
        let start = Instant::now();
        runner.sync(Epoch { time, shards })?;
        latencies_ms.push(start.elapsed().as_secs_f64() * 1e3);
        forget_cpu_ms.push((cpu_nanos() - cpu) as f64 / 1e6);
        forgotten(i);
        if phases {
            eprintln!(
                "forget {i}: user {} with {} events, {:.2} ms, from {start:?}",
                user.0,
                by_user[user].len(),
                latencies_ms[i]
            );
        }
    }
    if phases {
        eprintln!("forget phase ends at {:?}", Instant::now());
    }
    let usage = meter.finish();
    let as_of = (streamed_at + 1 + count as u64) as i64;
    let finished = runner.finish(as_of, candidates.clone())?;
    // The rebuild: the same views from scratch over the surviving events.
    let forgotten: BTreeSet<UserId> = candidates.into_iter().collect();
    let survivors: Vec<Event> = events
        .into_iter()
        .filter(|e| !forgotten.contains(&e.user))
        .collect();
    let runner = Runner::start(Cluster::local(workers), views)?;
    let start = Instant::now();
    load_at_once(&runner, &survivors, &routing)?;
    let rebuild_s = start.elapsed().as_secs_f64();
    drop(runner.finish(as_of, Vec::new())?);
    Ok(Outcome {
        data: name.to_string(),
        workers,
        events: total,
        build_s,
        new_events: total - split,
        new_events_per_s: (total - split) as f64 / stream_s.max(1e-9),
        latencies_ms,
        forget_cpu_ms,
        rebuild_s,
        residual_records: finished.audit.residual_records,
        usage,
    })
}

/// Marks the start of the forget phase, and [`forgotten`] the end of each forget, for counting
/// the instructions of each forget with callgrind, whatever the load of the machine:
/// `valgrind --tool=callgrind --zero-before='*forget_phase_starts' --dump-after='*forgotten'`
/// writes one profile per forget (`callgrind.out.PID.N`, N = forget + 1).
#[inline(never)]
fn forget_phase_starts() {
    std::hint::black_box(());
}

/// See [`forget_phase_starts`].
#[inline(never)]
fn forgotten(i: usize) {
    std::hint::black_box(i);
}

fn print_table(outcomes: &[Outcome]) {
    println!(
        "| data | workers | build 90% (s) | new events/s | forget p50 (ms) | p99 (ms) | max (ms) \
         | forget CPU p50 (ms) | rebuild (s) | rebuild / p50 | peak RSS (MiB) | residual |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for o in outcomes {
        let mut sorted = o.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let p50 = percentile(&sorted, 50.0);
        let p99 = percentile(&sorted, 99.0);
        let max = sorted.last().copied().unwrap_or(f64::NAN);
        let mut cpu = o.forget_cpu_ms.clone();
        cpu.sort_by(f64::total_cmp);
        println!(
            "| {} ({} events) | {} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0}× | {:.0} | {} |",
            o.data,
            o.events,
            o.workers,
            o.build_s,
            o.new_events_per_s,
            p50,
            p99,
            max,
            percentile(&cpu, 50.0),
            o.rebuild_s,
            o.rebuild_s * 1e3 / p50,
            mib(o.usage.peak_kib),
            o.residual_records
        );
    }
    for o in outcomes {
        let mut sorted = o.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        let p50 = percentile(&sorted, 50.0);
        let ratio = o.rebuild_s * 1e3 / p50;
        println!(
            "{} on {} workers: forget p50 {:.2} ms (target < {TARGET_FORGET_P50_MS} ms: {}), \
             rebuild / p50 {:.0}× (target ≥ {TARGET_RATIO}×: {})",
            o.data,
            o.workers,
            p50,
            if p50 < TARGET_FORGET_P50_MS {
                "met"
            } else {
                "missed"
            },
            ratio,
            if ratio >= TARGET_RATIO {
                "met"
            } else {
                "missed"
            },
        );
    }
}
