//! Helpers shared by the benchmarks: a seeded generator, and the peak-memory and CPU readings
//! of the current process.
#![allow(dead_code)]

use serde::{Deserialize, Serialize};

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

/// Measures the part of a child between its creation and [`Meter::finish`].
pub struct Meter {
    pub baseline_kib: u64,
    cpu_start: f64,
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

/// The nearest-rank percentile `p` (0–100) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
