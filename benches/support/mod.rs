//! Shared by the benchmarks (`foundation`, `scaling`): the seeded event generator, process
//! measurements (peak memory, CPU), the child-process protocol, and the forget-latency
//! measurement. Each benchmark binary uses a subset.
#![allow(dead_code)]

use anyhow::{bail, Context, Result};
use behave::event::{Event, Sym, UserId};
use behave::ingest::{Epoch, Routing};
use behave::replay::{replay, ReplayOptions, ReplayOutcome};
use behave::runtime::{Cluster, Runner, ViewConfig};
use behave::spec::Spec;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Seed of the event generator; the same options always give the same events.
pub const SEED: u64 = 0x5eed_beba_0e00_0001;
/// Seed of the choice of users to forget.
pub const FORGET_SEED: u64 = 0xf0f6_e7a1_0000_0002;
/// Prefix of the one result line a child prints.
pub const RESULT_PREFIX: &str = "BENCH-RESULT ";
/// Environment variable named by the spec's `key_env`; it must stay unset so `key` is used.
pub const UNSET_KEY_ENV: &str = "BEHAVE_BENCH_KEY_UNSET";

/// Start of the generated data: 2024-03-01T00:00:00Z.
pub const T0: i64 = 1_709_251_200;
/// Days of generated data.
pub const DAYS: u64 = 30;
/// Items in the catalogue.
pub const ITEMS: usize = 50_000;
/// Event types and their relative frequencies.
pub const KINDS: [(&str, f64); 7] = [
    ("view", 0.50),
    ("click", 0.18),
    ("search", 0.12),
    ("add_to_cart", 0.08),
    ("login", 0.07),
    ("purchase", 0.03),
    ("share", 0.02),
];
/// Relative activity per hour of the day (UTC): quiet nights, an evening peak.
pub const HOURS: [f64; 24] = [
    2.0, 1.2, 0.8, 0.6, 0.6, 0.8, 1.5, 3.0, 4.5, 5.0, 5.0, 5.2, 5.5, 5.2, 5.0, 5.0, 5.2, 5.8, 6.5,
    7.5, 8.0, 7.2, 5.0, 3.2,
];

// ---------------------------------------------------------------------------------------------
// Generator
// ---------------------------------------------------------------------------------------------

/// SplitMix64: small, fast and good enough for synthetic data.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Keeps `count` of `items` (all if fewer), chosen uniformly at random, in random order.
    pub fn choose<T>(&mut self, items: &mut Vec<T>, count: usize) {
        let count = count.min(items.len());
        for i in 0..count {
            let j = i + self.below((items.len() - i) as u64) as usize;
            items.swap(i, j);
        }
        items.truncate(count);
    }

    /// Exponentially distributed with the given mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }

    /// Geometric on `1, 2, ...` with the given mean (at least 1).
    pub fn geometric(&mut self, mean: f64) -> u64 {
        let p = 1.0 / mean.max(1.0);
        if p >= 1.0 {
            return 1;
        }
        1 + ((1.0 - self.unit()).ln() / (1.0 - p).ln()).floor() as u64
    }
}

/// A discrete distribution sampled by binary search over its cumulative weights.
pub struct Discrete {
    pub cumulative: Vec<f64>,
}

impl Discrete {
    pub fn new(weights: impl IntoIterator<Item = f64>) -> Discrete {
        let mut total = 0.0;
        let cumulative = weights
            .into_iter()
            .map(|w| {
                total += w;
                total
            })
            .collect();
        Discrete { cumulative }
    }

    /// Zipf over ranks `0..n` with exponent `s`: rank `k` has weight `1 / (k + 1)^s`.
    pub fn zipf(n: usize, s: f64) -> Discrete {
        Discrete::new((1..=n).map(|k| (k as f64).powf(-s)))
    }

    pub fn sample(&self, rng: &mut Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let x = rng.unit() * total;
        self.cumulative
            .partition_point(|&c| c <= x)
            .min(self.cumulative.len().saturating_sub(1))
    }
}

/// One generated event; `user` is the user's number, `kind` an index into [`KINDS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Row {
    pub time: i64,
    pub user: u32,
    pub kind: u8,
    pub item: u32,
}

/// The generated events, sorted by time, and how many sessions made them.
pub struct Dataset {
    pub rows: Vec<Row>,
    pub sessions: u64,
}

/// Generates `events` events of `users` users: users drawn by Zipf(0.75) activity (ranks
/// shuffled over user numbers), each draw a session of geometric length (mean 8) with
/// exponential gaps (mean 45 s), starting on one of 30 days at an hour drawn from [`HOURS`];
/// event types from [`KINDS`], items from a Zipf(1.05) catalogue of [`ITEMS`].
pub fn generate(events: usize, users: u32, seed: u64) -> Dataset {
    let mut rng = Rng(seed);
    let mut ranks: Vec<u32> = (0..users).collect();
    for i in (1..ranks.len()).rev() {
        ranks.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let user_dist = Discrete::zipf(users as usize, 0.75);
    let item_dist = Discrete::zipf(ITEMS, 1.05);
    let kind_dist = Discrete::new(KINDS.iter().map(|(_, w)| *w));
    let hour_dist = Discrete::new(HOURS);
    let mut rows = Vec::with_capacity(events);
    let mut sessions = 0;
    while rows.len() < events {
        sessions += 1;
        let user = ranks[user_dist.sample(&mut rng)];
        let day = rng.below(DAYS) as i64;
        let hour = hour_dist.sample(&mut rng) as i64;
        let mut time = T0 + day * 86_400 + hour * 3_600 + rng.below(3_600) as i64;
        let length = rng.geometric(8.0).min((events - rows.len()) as u64);
        for _ in 0..length {
            rows.push(Row {
                time,
                user,
                kind: kind_dist.sample(&mut rng) as u8,
                item: item_dist.sample(&mut rng) as u32,
            });
            time += 1 + rng.exponential(45.0).min(1_500.0) as i64;
        }
    }
    rows.sort_unstable();
    Dataset { rows, sessions }
}

/// The raw id of user number `user`, as written to the CSV.
pub fn user_name(user: u32) -> String {
    format!("user-{user:06}")
}

/// The name of catalogue item `item`.
pub fn item_name(item: u32) -> String {
    format!("item-{item}")
}

/// Where the event file of these options lives.
pub fn data_path(events: usize, users: u32) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    let name = if users == 100_000 {
        format!("events-{events}.csv")
    } else {
        format!("events-{events}-u{users}.csv")
    };
    dir.join(name)
}

/// Writes the rows as `user,time,event,item` CSV (via a temporary file, renamed at the end).
pub fn write_csv(rows: &[Row], path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .context("the data path has a parent directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let partial = path.with_extension("csv.partial");
    let file = File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    writeln!(out, "user,time,event,item")?;
    for row in rows {
        writeln!(
            out,
            "{},{},{},{}",
            user_name(row.user),
            behave::time::format_time(row.time),
            KINDS[row.kind as usize].0,
            item_name(row.item)
        )?;
    }
    out.flush()?;
    drop(out);
    std::fs::rename(&partial, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Process measurements
// ---------------------------------------------------------------------------------------------

/// Memory and CPU of the current process.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Resident set size at the start of the measured part, KiB.
    pub baseline_kib: u64,
    /// Peak resident set size (`VmHWM`), KiB.
    pub peak_kib: u64,
    /// User + system CPU seconds of the measured part.
    pub cpu_s: f64,
}

/// A field of `/proc/self/status` in KiB (e.g. `VmHWM:`).
pub fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let value = line.strip_prefix(field)?.trim().strip_suffix("kB")?;
                value.trim().parse().ok()
            })
        })
        .unwrap_or(0)
}

/// User + system CPU seconds used by this process so far (from `/proc/self/stat`, 100 Hz).
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// CPU time this process's threads have run so far, in nanoseconds (the sum of the first field
/// of `/proc/self/task/*/schedstat`, exact): unlike wall time, it does not grow when other
/// processes hold the cores, so it compares runs on a busy machine.
pub fn cpu_nanos() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Measures the part of a child between its creation and [`Meter::finish`].
pub struct Meter {
    pub baseline_kib: u64,
    pub cpu_start: f64,
}

impl Meter {
    pub fn start() -> Meter {
        Meter {
            baseline_kib: status_kib("VmRSS:"),
            cpu_start: cpu_seconds(),
        }
    }

    pub fn finish(&self) -> Usage {
        Usage {
            baseline_kib: self.baseline_kib,
            peak_kib: status_kib("VmHWM:"),
            cpu_s: cpu_seconds() - self.cpu_start,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForgetResult {
    pub workers: usize,
    pub tick: i64,
    pub live_events: u64,
    /// Send of the first epoch to the return of the final `sync`.
    pub load_s: f64,
    /// Send→sync-return of each forget, in milliseconds, in request order.
    pub latencies_ms: Vec<f64>,
    /// Events of the user forgotten last (the heaviest user).
    pub heaviest_events: usize,
    pub heaviest_ms: f64,
    /// Records of forgotten users left in the arrangements after `finish` (must be 0).
    pub residual_records: usize,
    /// `usage.baseline_kib` is taken after generating the data, before starting the workers.
    pub usage: Usage,
}

/// Symbols of the event types and catalogue items, computed once.
pub struct Symbols {
    pub kinds: Vec<Sym>,
    pub items: Vec<Sym>,
}

impl Symbols {
    pub fn new() -> Symbols {
        Symbols {
            kinds: KINDS.iter().map(|(name, _)| Sym::of(name)).collect(),
            items: (0..ITEMS as u32).map(|i| Sym::of(&item_name(i))).collect(),
        }
    }

    /// The event of a generated row, with `UserId(user number)` as its user.
    pub fn event(&self, row: &Row) -> Event {
        Event {
            time: row.time,
            user: UserId(u64::from(row.user)),
            kind: self.kinds[row.kind as usize],
            item: Some(self.items[row.item as usize]),
            value: None,
            props: Vec::new(),
        }
    }
}

/// `count` distinct active users chosen uniformly (seeded), then the heaviest user (last).
pub fn forget_targets(rows: &[Row], users: u32, count: usize) -> Vec<u32> {
    let mut per_user = vec![0usize; users as usize];
    for row in rows {
        per_user[row.user as usize] += 1;
    }
    let heaviest = (0..users)
        .max_by_key(|&u| per_user[u as usize])
        .unwrap_or(0);
    let mut active: Vec<u32> = (0..users)
        .filter(|&u| per_user[u as usize] > 0 && u != heaviest)
        .collect();
    Rng(FORGET_SEED).choose(&mut active, count);
    active.push(heaviest);
    active
}

/// Feeds every row to the runner, one epoch per tick, the last with `sync`; keeps the events of
/// `keep` users. Returns the last epoch's time.
pub fn load(
    runner: &Runner,
    rows: &[Row],
    routing: &Routing,
    symbols: &Symbols,
    keep: &mut HashMap<u32, Vec<Event>>,
) -> Result<u64> {
    let events = rows.iter().map(|row| {
        let event = symbols.event(row);
        if let Some(kept) = keep.get_mut(&row.user) {
            kept.push(event.clone());
        }
        event
    });
    send_in_epochs(runner, events, routing, 0)
}

/// Sends `events` (sorted by time) in one epoch per tick, none before `after`, the last with
/// `sync`; returns the last epoch's time.
pub fn send_in_epochs(
    runner: &Runner,
    events: impl IntoIterator<Item = Event>,
    routing: &Routing,
    after: u64,
) -> Result<u64> {
    let mut epoch: Option<Epoch> = None;
    for event in events {
        let time = routing.epoch(event.time).max(after);
        if epoch.as_ref().is_some_and(|e| e.time != time) {
            if let Some(done) = epoch.take() {
                runner.send(done)?;
            }
        }
        let current = epoch.get_or_insert_with(|| Epoch {
            time,
            shards: vec![Vec::new(); routing.shards],
        });
        current.shards[routing.shard(event.user)].push((event, 1));
    }
    let last = epoch.context("no events to load")?;
    let time = last.time;
    runner.sync(last)?;
    Ok(time)
}

/// A whole replay of `spec` in memory (no output files, no progress line) on `workers` workers.
pub fn replay_in_memory(spec: Spec, workers: usize) -> Result<ReplayOutcome> {
    Ok(replay(ReplayOptions {
        spec,
        events: None,
        forget: None,
        out: None,
        changes: None,
        reveal_ids: false,
        as_of: None,
        cluster: Cluster::local(workers),
        progress: false,
        started: None,
    })?)
}

/// The epoch at `time` retracting every one of `events` (all of one user).
pub fn retraction(events: &[Event], time: u64, routing: &Routing) -> Epoch {
    let mut shards = vec![Vec::new(); routing.shards];
    for event in events {
        shards[routing.shard(event.user)].push((event.clone(), -1));
    }
    Epoch { time, shards }
}

/// Generates the stream of `events` events of `users` users, loads it into a [`Runner`] of
/// `workers` threads maintaining `views` (one epoch per `tick`), then forgets `forgets` random
/// active users and the heaviest user one at a time, timing each from `send` to the return of
/// `sync` (every view updated), and audits the arrangements at the end.
pub fn run_forget(
    events: usize,
    users: u32,
    workers: usize,
    tick: i64,
    forgets: usize,
    views: ViewConfig,
) -> Result<ForgetResult> {
    let data = generate(events, users, SEED);
    let symbols = Symbols::new();
    let targets = forget_targets(&data.rows, users, forgets);
    let mut kept: HashMap<u32, Vec<Event>> = targets.iter().map(|&u| (u, Vec::new())).collect();
    let routing = Routing::single(tick, workers);
    let meter = Meter::start();
    let runner = Runner::start(Cluster::local(workers), views)?;
    let start = Instant::now();
    let loaded_at = load(&runner, &data.rows, &routing, &symbols, &mut kept)?;
    let load_s = start.elapsed().as_secs_f64();
    let mut latencies_ms = Vec::with_capacity(targets.len());
    for (i, user) in targets.iter().enumerate() {
        let epoch = retraction(&kept[user], loaded_at + 1 + i as u64, &routing);
        let start = Instant::now();
        runner.sync(epoch)?;
        latencies_ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let heaviest_ms = latencies_ms.pop().unwrap_or(0.0);
    let heaviest_events = targets.last().map_or(0, |u| kept[u].len());
    let as_of = (loaded_at + targets.len() as u64) as i64;
    let forgotten = targets.iter().map(|&u| UserId(u64::from(u))).collect();
    let usage = meter.finish();
    let finished = runner.finish(as_of, forgotten)?;
    Ok(ForgetResult {
        workers,
        tick,
        live_events: (events - targets.iter().map(|u| kept[u].len()).sum::<usize>()) as u64,
        load_s,
        latencies_ms,
        heaviest_events,
        heaviest_ms,
        residual_records: finished.audit.residual_records,
        usage,
    })
}

/// Runs `job` in a fresh child process (this binary with `--child JSON`) and returns the
/// outcome it printed after [`RESULT_PREFIX`].
pub fn run_child<J: Serialize + std::fmt::Debug, O: DeserializeOwned>(job: &J) -> Result<O> {
    let exe = std::env::current_exe().context("locating the benchmark binary")?;
    let output = Command::new(exe)
        .arg("--child")
        .arg(serde_json::to_string(job)?)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("starting a benchmark child process")?;
    if !output.status.success() {
        bail!("child {job:?} failed with {}", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix(RESULT_PREFIX))
        .with_context(|| format!("child {job:?} printed no result"))?;
    eprintln!("  {line}");
    serde_json::from_str(line).context("parsing a child's result")
}

/// KiB in MiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The nearest-rank percentile `p` (0–100) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
