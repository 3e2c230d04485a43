//! Worker independence through the binary: `-w 1`, `-w 3` and two processes on loopback
//! write byte-identical snapshots; a process whose peer never comes fails in bounded time.

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
