//! Worker independence through the binary: `-w 1`, `-w 3` and two processes on loopback
//! write byte-identical snapshots, and `behave cluster-test` finds every shipped spec identical
//! on two and three processes; a process whose peer never comes, or dies mid-run, fails in
//! bounded time naming it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::LEARNING_FILES as VIEW_FILES;

fn replay(out: &Path, extra: &[&str]) -> Command {
    let mut command = common::behave_command(&[
        "replay",
        "dataflows/learning.toml",
        "--out",
        out.to_str().unwrap(),
    ]);
    command.args(extra);
    command
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn files(dir: &Path) -> Vec<String> {
    VIEW_FILES
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}")))
        .collect()
}

#[test]
fn threads_and_processes_give_identical_snapshots() {
    let one = common::temp_dir();
    let three = common::temp_dir();
    assert!(replay(one.path(), &["-w", "1"]).status().unwrap().success());
    assert!(replay(three.path(), &["-w", "3"])
        .status()
        .unwrap()
        .success());
    let reference = files(one.path());
    assert!(reference[0].lines().count() > 1);
    assert_eq!(reference, files(three.path()));

    let cluster = common::temp_dir();
    let hostfile = cluster.path().join("hosts");
    std::fs::write(
        &hostfile,
        format!("127.0.0.1:{}\n127.0.0.1:{}\n", free_port(), free_port()),
    )
    .unwrap();
    let out = cluster.path().join("out");
    let children: Vec<_> = (0..2)
        .map(|p| {
            replay(
                &out,
                &[
                    "-w",
                    "2",
                    "-n",
                    "2",
                    "-p",
                    &p.to_string(),
                    "-h",
                    hostfile.to_str().unwrap(),
                ],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_eq!(reference, files(&out));
}

/// The shipped specs (`dataflows/*.toml`) whose inputs are fixtures shipped in `fixtures/`,
/// sorted; a spec over downloaded data (e.g. MovieLens, in the ignored `data/`) is skipped with
/// a note.
fn runnable_specs() -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut specs: Vec<_> = std::fs::read_dir(root.join("dataflows"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    specs.sort();
    specs.retain(|path| {
        // Read the input paths from the TOML itself: loading a spec over downloaded data
        // already fails when that data (e.g. an item catalog next to the events) is absent.
        let text = std::fs::read_to_string(path).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        let input = table.get("input").and_then(|i| i.as_table());
        // Downloaded data sets (data/, e.g. MovieLens) are too large for a debug-build test;
        // `behave cluster-test` checks them in release.
        let outside: Vec<&str> = ["events", "forget"]
            .iter()
            .filter_map(|key| input.and_then(|i| i.get(*key)).and_then(|v| v.as_str()))
            .filter(|file| !file.starts_with("fixtures") || !root.join(file).exists())
            .collect();
        if !outside.is_empty() {
            eprintln!(
                "skipping {}: input {outside:?} is not a shipped fixture",
                path.display()
            );
            return false;
        }
        behave::spec::Spec::load(path).unwrap_or_else(|e| panic!("{e}"));
        true
    });
    specs
}

/// `behave cluster-test` on `spec`: asserts it exits 0, that every view file of the spec was
/// compared and identical, and returns the verdict.
fn cluster_test(spec: &Path, processes: usize, workers: usize) -> String {
    let output = common::behave_command(&[
        "cluster-test",
        spec.to_str().unwrap(),
        "--processes",
        &processes.to_string(),
        "--workers",
        &workers.to_string(),
        "--timeout",
        "300",
    ])
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{}: {stdout}{stderr}",
        spec.display()
    );
    let parsed = behave::spec::Spec::load(spec).unwrap();
    let mut expected = vec![
        "changes.jsonl".to_string(),
        "rejected.csv".to_string(),
        "tombstones.csv".into(),
        "summary.json".into(),
    ];
    if parsed.sessions.is_some() {
        expected.push("sessions.csv".into());
    }
    if parsed.engagement.is_some() {
        expected.push("engagement.csv".into());
    }
    if !parsed.segment.is_empty() {
        expected.push("segments.csv".into());
        expected.push("segment_sizes.csv".into());
    }
    for table in &parsed.retention {
        expected.push(format!("retention_{}.csv", table.name));
    }
    for file in &expected {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(file.as_str()) && l.contains("identical")),
            "{}: {file} not compared identical:\n{stdout}",
            spec.display()
        );
    }
    let compared: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("IDENTICAL: "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}: no verdict in {stdout}", spec.display()));
    assert!(compared >= expected.len(), "{}: {stdout}", spec.display());
    assert!(
        stdout.contains(", 0 differ"),
        "{}: {stdout}",
        spec.display()
    );
    stdout
}

#[test]
fn every_shipped_spec_on_two_and_three_processes_equals_one_worker() {
    let specs = runnable_specs();
    assert!(
        specs.len() >= 2,
        "the learning and shop specs ship with data"
    );
    for spec in &specs {
        cluster_test(spec, 2, 2);
        cluster_test(spec, 3, 1);
    }
}

#[test]
fn cluster_test_reports_a_failing_process() {
    let dir = common::temp_dir();
    let output = common::behave_command(&[
        "cluster-test",
        "dataflows/learning.toml",
        "--events",
        dir.path().join("absent.csv").to_str().unwrap(),
    ])
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("failed (exit status: 2)"), "{stderr}");
    assert!(stderr.contains("absent.csv"), "{stderr}");
}

#[test]
fn a_missing_peer_fails_in_bounded_time_naming_it() {
    let dir = common::temp_dir();
    let hostfile = dir.path().join("hosts");
    let (p0, p1) = (free_port(), free_port());
    std::fs::write(&hostfile, format!("127.0.0.1:{p0}\n127.0.0.1:{p1}\n")).unwrap();
    let start = Instant::now();
    let output = replay(
        &dir.path().join("out"),
        &[
            "-n",
            "2",
            "-p",
            "1",
            "-h",
            hostfile.to_str().unwrap(),
            "--connect-timeout",
            "2",
        ],
    )
    .stdout(Stdio::null())
    .output()
    .unwrap();
    assert!(!output.status.success());
    assert!(start.elapsed() < Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("process 0 at 127.0.0.1:{p0}")),
        "{stderr}"
    );
}

/// Starts two processes (two workers each) on the learning spec, each reading its events from a
/// named pipe, feeds them the first rows of the fixture and keeps the pipes open, so both are
/// connected and mid-run; then kills process `victim` and returns how the survivor ended:
/// `(exit code, stderr, seconds from the kill to its exit, victim's address)`.
#[cfg(unix)]
fn kill_mid_run(victim: usize) -> (Option<i32>, String, f64, String) {
    let dir = common::temp_dir();
    let pipes: Vec<_> = (0..2)
        .map(|p| dir.path().join(format!("events-{p}")))
        .collect();
    for pipe in &pipes {
        let made = Command::new("mkfifo").arg(pipe).status().unwrap();
        assert!(made.success(), "mkfifo {}", pipe.display());
    }
    let addresses = [
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    ];
    let hostfile = dir.path().join("hosts");
    std::fs::write(&hostfile, addresses.join("\n") + "\n").unwrap();
    let mut children: Vec<_> = (0..2)
        .map(|p| {
            replay(
                &dir.path().join("out"),
                &[
                    "--events",
                    pipes[p].to_str().unwrap(),
                    "-w",
                    "2",
                    "-n",
                    "2",
                    "-p",
                    &p.to_string(),
                    "-h",
                    hostfile.to_str().unwrap(),
                ],
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    // A process opens its event file only once the cluster is connected, so opening the write
    // ends (which blocks until the reader opens) also waits for the connection.
    let (sender, opened) = std::sync::mpsc::channel();
    let to_open = pipes.clone();
    std::thread::spawn(move || {
        for pipe in to_open {
            let writer = std::fs::OpenOptions::new().write(true).open(pipe);
            let _ = sender.send(writer);
        }
    });
    let head: String = std::fs::read_to_string("fixtures/learning/events.csv")
        .unwrap()
        .lines()
        .take(30)
        .map(|line| format!("{line}\n"))
        .collect();
    let mut writers = Vec::new();
    for _ in &pipes {
        let Ok(writer) = opened.recv_timeout(Duration::from_secs(60)) else {
            children.iter_mut().for_each(|c| drop(c.kill()));
            panic!("the processes did not connect and open their input within 60 s");
        };
        let mut writer = writer.unwrap();
        std::io::Write::write_all(&mut writer, head.as_bytes()).unwrap();
        writers.push(writer);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let survivor = 1 - victim;
    assert!(
        children[survivor].try_wait().unwrap().is_none(),
        "process {survivor} ended before the kill"
    );
    children[victim].kill().unwrap();
    children[victim].wait().unwrap();
    let killed = Instant::now();
    let mut child = children.swap_remove(survivor);
    while child.try_wait().unwrap().is_none() {
        if killed.elapsed() > Duration::from_secs(30) {
            child.kill().unwrap();
            panic!("process {survivor} still running 30 s after its peer was killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let seconds = killed.elapsed().as_secs_f64();
    drop(writers);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (
        output.status.code(),
        stderr,
        seconds,
        addresses[victim].clone(),
    )
}

#[cfg(unix)]
#[test]
fn killing_a_worker_process_fails_the_gatherer_at_once_naming_it() {
    assert_survivor_names_lost_peer(1);
}

#[cfg(unix)]
#[test]
fn killing_the_gathering_process_fails_the_others_at_once_naming_it() {
    assert_survivor_names_lost_peer(0);
}

/// Kills process `victim` mid-run: the survivor exits 3 within 30 s, naming the victim and its
/// address, without a panic.
#[cfg(unix)]
fn assert_survivor_names_lost_peer(victim: usize) {
    let (code, stderr, seconds, address) = kill_mid_run(victim);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!("lost connection to process {victim} at {address}")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(seconds < 30.0, "{seconds} s");
}

#[cfg(unix)]
#[test]
fn cluster_test_kills_runs_that_do_not_finish_in_time_and_names_them() {
    // Every run blocks opening a named pipe nobody writes to, so none can finish.
    let dir = common::temp_dir();
    let pipe = dir.path().join("events");
    assert!(Command::new("mkfifo")
        .arg(&pipe)
        .status()
        .unwrap()
        .success());
    let start = Instant::now();
    let output = common::behave_command(&[
        "cluster-test",
        "dataflows/learning.toml",
        "--events",
        pipe.to_str().unwrap(),
        "--timeout",
        "3",
    ])
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(start.elapsed() < Duration::from_secs(30));
    assert!(
        stderr.contains(
            "process 0 of 2, process 1 of 2, the one-worker run did not finish within 3 s"
        ),
        "{stderr}"
    );
}
