//! The command line: `behave replay SPEC [options]`, with timely's worker and cluster flags.

use crate::runtime::Cluster;
use clap::{ArgAction, Args, Parser, Subcommand};
use std::path::{Path, PathBuf};

/// Keeps user-behaviour analytics up to date with differential dataflow.
#[derive(Debug, Parser)]
#[command(name = "behave", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Replay a spec's event stream (and forget requests) through its views and write snapshots.
    Replay(ReplayArgs),
    /// Hold out part of each user's interactions, build the views on the rest, and score the
    /// recommendations (MAP, NDCG, precision, recall at k) beside a popularity baseline.
    Evaluate(EvaluateArgs),
    /// Smoke-test a cluster before deploying: run SPEC on P local processes of T workers (free
    /// loopback ports) and on one worker, and check every output file is the same.
    ClusterTest(ClusterTestArgs),
}

/// How `behave evaluate` holds out interactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitKind {
    /// Each user's latest interactions (by time).
    Temporal,
    /// A seeded random share of each user's interactions.
    Random,
}

/// Arguments of `behave evaluate`.
#[derive(Debug, Args)]
pub struct EvaluateArgs {
    /// The dataflow spec (TOML) with `[similarity]` and `[recommendations]`.
    pub spec: PathBuf,
    /// How to hold out.
    #[arg(long, value_enum, default_value_t = SplitKind::Temporal)]
    pub split: SplitKind,
    /// Training share of each user's interactions [default: 0.8 temporal, 0.75 random].
    #[arg(long)]
    pub ratio: Option<f64>,
    /// Seed of the random split.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Length of the scored lists.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// Print the table as one JSON object.
    #[arg(long)]
    pub json: bool,
}

impl EvaluateArgs {
    /// The evaluation options these flags describe.
    pub fn options(&self) -> crate::evaluate::EvaluateOptions {
        use crate::evaluate::{EvaluateOptions, Split};
        let (split, ratio) = match self.split {
            SplitKind::Temporal => (Split::Temporal, 0.8),
            SplitKind::Random => (Split::Random { seed: self.seed }, 0.75),
        };
        EvaluateOptions {
            split,
            ratio: self.ratio.unwrap_or(ratio),
            k: self.k,
        }
    }
}

/// Arguments of `behave cluster-test`.
#[derive(Debug, Args)]
pub struct ClusterTestArgs {
    /// The dataflow spec (TOML).
    pub spec: PathBuf,
    /// Processes to start (at least 2).
    #[arg(short = 'n', long, default_value_t = 2)]
    pub processes: usize,
    /// Worker threads per process.
    #[arg(short = 'w', long, default_value_t = 2)]
    pub workers: usize,
    /// Event file, overriding the spec's `input.events`.
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// Forget-request file, overriding the spec's `input.forget`.
    #[arg(long)]
    pub forget: Option<PathBuf>,
    /// Keep the outputs, hostfile and process logs in DIR (default: a temporary directory,
    /// removed afterwards).
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Seconds all runs together may take before they are killed.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Do not write and compare the change log of every view (`changes.jsonl`); for large
    /// inputs, whose change log would not fit in memory.
    #[arg(long)]
    pub no_changes: bool,
}

/// Arguments of `behave replay`.
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct ReplayArgs {
    /// The dataflow spec (TOML).
    pub spec: PathBuf,
    /// Event file, overriding the spec's `input.events`.
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// Forget-request file (`user,time` CSV), overriding the spec's `input.forget`.
    #[arg(long)]
    pub forget: Option<PathBuf>,
    /// Output directory (default: `out/<spec name>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write every change of every view to FILE as JSON lines
    /// (`{"view":…,"row":{…},"time":…,"diff":±1}`), in time order.
    #[arg(long, value_name = "FILE")]
    pub changes: Option<PathBuf>,
    /// Write raw user ids instead of pseudonyms (needs the key; never for forgotten users).
    #[arg(long)]
    pub reveal_ids: bool,
    /// Take the final snapshot as of this time (RFC 3339 or unix seconds) if later than the data.
    #[arg(long, value_parser = parse_as_of)]
    pub as_of: Option<i64>,
    /// Worker threads per process.
    #[arg(short = 'w', long = "workers", default_value_t = 1)]
    pub workers: usize,
    /// Number of processes.
    #[arg(short = 'n', long = "processes", default_value_t = 1)]
    pub processes: usize,
    /// This process's index, 0-based.
    #[arg(short = 'p', long = "process", default_value_t = 0)]
    pub process: usize,
    /// Hostfile: one `host:port` per line, in process order.
    #[arg(short = 'h', long = "hostfile")]
    pub hostfile: Option<PathBuf>,
    /// Seconds to wait for the other processes before failing.
    #[arg(long, default_value_t = 30)]
    pub connect_timeout: u64,
    /// Show progress on stderr even when it is not a terminal.
    #[arg(long)]
    pub progress: bool,
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    pub help: Option<bool>,
}

fn parse_as_of(text: &str) -> Result<i64, String> {
    crate::time::parse_time(text).ok_or_else(|| {
        format!("\"{text}\" is not RFC 3339, \"YYYY-MM-DD HH:MM:SS\" or unix seconds")
    })
}

/// Why cluster flags are unusable.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The hostfile could not be read.
    #[error("cannot read hostfile {path}: {source}")]
    Hostfile {
        /// The hostfile.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The flags do not describe a cluster.
    #[error("{0}")]
    Flags(String),
}

/// Reads a hostfile: one `host:port` a line; blank lines and `#` comments are ignored.
pub fn read_hostfile(path: &Path) -> Result<Vec<String>, ClusterError> {
    let text = std::fs::read_to_string(path).map_err(|source| ClusterError::Hostfile {
        path: path.to_owned(),
        source,
    })?;
    let mut hosts = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(ClusterError::Flags(format!(
                "{}: line {}: expected host:port, found \"{line}\"",
                path.display(),
                number + 1
            )));
        }
        hosts.push(line.to_string());
    }
    Ok(hosts)
}

impl ReplayArgs {
    /// The cluster these flags describe.
    pub fn cluster(&self) -> Result<Cluster, ClusterError> {
        if self.workers == 0 {
            return Err(ClusterError::Flags("-w must be at least 1".into()));
        }
        if self.processes <= 1 {
            return Ok(Cluster::local(self.workers));
        }
        if self.process >= self.processes {
            return Err(ClusterError::Flags(format!(
                "-p {} is out of range for -n {}",
                self.process, self.processes
            )));
        }
        let addresses = match &self.hostfile {
            Some(path) => read_hostfile(path)?,
            None => (0..self.processes)
                .map(|i| format!("localhost:{}", 2101 + i))
                .collect(),
        };
        if addresses.len() < self.processes {
            return Err(ClusterError::Flags(format!(
                "hostfile lists {} processes, -n asks for {}",
                addresses.len(),
                self.processes
            )));
        }
        Ok(Cluster {
            threads: self.workers,
            process: self.process,
            addresses: addresses[..self.processes].to_vec(),
        })
    }
}
