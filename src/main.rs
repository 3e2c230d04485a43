//! The `behave` command.

use anyhow::Context;
use behave::cli::{Cli, ClusterTestArgs, Command, EvaluateArgs, ReplayArgs};
use behave::replay::{replay, ReplayOptions};
use behave::spec::Spec;
use clap::Parser;
use std::io::{IsTerminal, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replay(args) => run_replay(args),
        Command::Evaluate(args) => run_evaluate(args),
        Command::ClusterTest(args) => run_cluster_test(args),
    };
    if let Err(error) = result {
        eprintln!("behave: error: {error:#}");
        std::process::exit(2);
    }
}

fn run_replay(args: ReplayArgs) -> anyhow::Result<()> {
    let spec = Spec::load(&args.spec)?;
    let cluster = args.cluster()?;
    let clustered = cluster.addresses.len() > 1;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("out").join(spec.name()));
    let started = Arc::new(AtomicBool::new(false));
    if clustered {
        watch_connections(&cluster, started.clone(), args.connect_timeout);
        exit_on_lost_peer(&cluster);
    }
    let outcome = replay(ReplayOptions {
        spec,
        events: args.events.clone(),
        forget: args.forget.clone(),
        out: Some(out.clone()),
        changes: args.changes.clone(),
        reveal_ids: args.reveal_ids,
        as_of: args.as_of,
        cluster: cluster.clone(),
        progress: args.progress || std::io::stderr().is_terminal(),
        started: Some(started),
    })
    .with_context(|| format!("replaying {}", args.spec.display()))?;
    if cluster.process == 0 {
        let text = format!(
            "behave replay: wrote {}\n{}",
            out.display(),
            outcome.summary.text()
        );
        // In a cluster timely prints its connection chatter on stdout: keep results off it.
        if clustered {
            eprint!("{text}");
        } else {
            print!("{text}");
        }
    }
    let audit = &outcome.summary.forget_audit;
    if audit.residual_records > 0 || audit.physical_records > 0 {
        anyhow::bail!(
            "forget audit failed: {} records ({} physical updates) of forgotten users remain in the arrangements",
            audit.residual_records,
            audit.physical_records
        );
    }
    Ok(())
}

fn run_evaluate(args: EvaluateArgs) -> anyhow::Result<()> {
    let spec = Spec::load(&args.spec)?;
    let options = args.options();
    let started = std::time::Instant::now();
    let evaluation = behave::evaluate::evaluate(&spec, &options)
        .with_context(|| format!("evaluating {}", args.spec.display()))?;
    if args.json {
        println!("{}", evaluation.json(options.k));
    } else {
        println!(
            "behave evaluate: {} ({:?} split, ratio {}, k {}): {} users, {} training and {} held-out events, {:.1} s",
            args.spec.display(),
            options.split,
            options.ratio,
            options.k,
            evaluation.users,
            evaluation.train_events,
            evaluation.test_events,
            started.elapsed().as_secs_f64()
        );
        print!("{}", evaluation.text(options.k));
    }
    Ok(())
}

/// `behave cluster-test`: exits 0 when the cluster's output equals the one-worker run's, 1 when
/// it differs, 2 when the test could not run (a process failed or timed out).
fn run_cluster_test(args: ClusterTestArgs) -> anyhow::Result<()> {
    let options = behave::cluster_test::ClusterTestOptions {
        exe: std::env::current_exe().context("locating the behave executable")?,
        spec: args.spec,
        processes: args.processes,
        workers: args.workers,
        events: args.events,
        forget: args.forget,
        keep: args.keep,
        timeout: Duration::from_secs(args.timeout),
        changes: !args.no_changes,
    };
    let verdict = behave::cluster_test::cluster_test(&options).with_context(|| {
        format!(
            "cluster test of {} on {} processes x {} workers",
            options.spec.display(),
            options.processes,
            options.workers
        )
    })?;
    print!("{}", verdict.text(&options));
    if !verdict.identical() {
        std::process::exit(1);
    }
    Ok(())
}

/// Fails the process, naming the unreachable peers, if the cluster is not connected in time.
fn watch_connections(cluster: &behave::runtime::Cluster, started: Arc<AtomicBool>, timeout: u64) {
    let addresses = cluster.addresses.clone();
    let me = cluster.process;
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(timeout);
        while std::time::Instant::now() < deadline {
            if started.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if started.load(Ordering::SeqCst) {
            return;
        }
        let unreachable: Vec<String> = addresses
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != me)
            .filter(|(_, address)| !reachable(address))
            .map(|(i, address)| format!("process {i} at {address}"))
            .collect();
        let who = if unreachable.is_empty() {
            "a peer accepted connections but did not join".to_string()
        } else {
            format!("cannot reach {}", unreachable.join(", "))
        };
        eprintln!("behave: error: cluster not connected after {timeout} s: {who}");
        std::process::exit(3);
    });
}

/// Set once a lost peer has been reported: later panics (workers finding their channels
/// poisoned) stay quiet, and only the first reporter exits.
static LOST_PEER: AtomicBool = AtomicBool::new(false);

/// Exits with status 3, naming the peer, as soon as a connection to another process of the
/// cluster breaks mid-run (the peer died, was killed, or its machine went away).
///
/// Timely panics in its network thread when a peer's socket closes; left alone, that panic
/// only prints a backtrace, and this process either fails later with a vague "workers stopped"
/// or, when its workers are waiting for input, hangs forever. The run cannot continue without
/// the peer's shards, so the only correct outcome is to fail at once and say why.
fn exit_on_lost_peer(cluster: &behave::runtime::Cluster) {
    let addresses = cluster.addresses.clone();
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        let thread = std::thread::current();
        let peer = behave::runtime::lost_peer(thread.name().unwrap_or(""), message);
        if let Some(peer) = peer {
            if LOST_PEER.swap(true, Ordering::SeqCst) {
                // Another network thread is already reporting and exiting.
                loop {
                    std::thread::park();
                }
            }
            let address = addresses.get(peer).map_or("?", String::as_str);
            // Not eprintln!: a failed write must not panic inside the panic hook.
            let _ = writeln!(
                std::io::stderr(),
                "behave: error: lost connection to process {peer} at {address} mid-run ({message}); \
                 the run failed: restart every process to rerun it"
            );
            std::process::exit(3);
        }
        if !LOST_PEER.load(Ordering::SeqCst) {
            default(info);
        }
    }));
}

fn reachable(address: &str) -> bool {
    address
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok())
}
