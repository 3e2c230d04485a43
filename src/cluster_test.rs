//! `behave cluster-test`: the smoke test to run before deploying a cluster. Starts `P` local
//! processes of `T` workers each on free loopback ports, replays a spec on them, replays it
//! again on one worker, and checks that every output file is the same.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Fields of `summary.json` that legitimately differ between a cluster and a one-worker run:
/// the shape and speed of the run, and the forget audit's arrangement and pending-merge counts
/// (process 0 reports the audit of its own workers only). Nested fields are `a.b`.
pub const SUMMARY_FIELDS_IGNORED: [&str; 6] = [
    "workers",
    "processes",
    "elapsed_s",
    "events_per_s",
    "forget_audit.traces",
    "forget_audit.physical_records",
];

/// The change log's name in each output directory.
pub const CHANGES_FILE: &str = "changes.jsonl";

/// Why a cluster test could not run to a verdict.
#[derive(Debug, thiserror::Error)]
pub enum ClusterTestError {
    /// The flags are unusable.
    #[error("{0}")]
    Flags(String),
    /// The spec is unusable (checked before any process starts).
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    /// A file or directory of the test could not be used.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A process could not be started.
    #[error("cannot start {run}: {source}")]
    Spawn {
        /// Which run (`process 1 of 2`, `the one-worker run`).
        run: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A run failed; the others were stopped.
    #[error("{run} failed ({status}); its stderr ends:\n{stderr}")]
    Failed {
        /// Which run.
        run: String,
        /// How it ended.
        status: String,
        /// The last lines of its stderr.
        stderr: String,
    },
    /// Runs did not finish in time; every run still going was killed.
    #[error("{runs} did not finish within {seconds} s and were killed (raise --timeout for large inputs)")]
    Timeout {
        /// The runs still going, e.g. `process 1 of 2, the one-worker run`.
        runs: String,
        /// The limit.
        seconds: u64,
    },
}

/// What to test.
#[derive(Clone, Debug)]
pub struct ClusterTestOptions {
    /// The `behave` executable to start (normally `std::env::current_exe()`).
    pub exe: PathBuf,
    /// The spec.
    pub spec: PathBuf,
    /// Processes in the cluster.
    pub processes: usize,
    /// Worker threads per process.
    pub workers: usize,
    /// Event file overriding the spec's.
    pub events: Option<PathBuf>,
    /// Forget file overriding the spec's.
    pub forget: Option<PathBuf>,
    /// Keep the outputs, hostfile and logs in this directory; `None` uses a temporary
    /// directory and removes it afterwards.
    pub keep: Option<PathBuf>,
    /// How long all runs together may take.
    pub timeout: Duration,
    /// Also write and compare the change log of every view (`changes.jsonl`, `--changes`).
    pub changes: bool,
}

/// How one output file compares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Comparison {
    /// Byte-identical (for `summary.json`: equal but for [`SUMMARY_FIELDS_IGNORED`]).
    Identical {
        /// Lines in the file.
        lines: usize,
    },
    /// The first difference.
    Differs {
        /// 1-based line number (for `summary.json`: 0, and `single`/`cluster` name the field).
        line: usize,
        /// That line in the one-worker output (empty past its end).
        single: String,
        /// That line in the cluster output (empty past its end).
        cluster: String,
    },
    /// Present in only one of the outputs.
    Missing {
        /// `true` if the cluster wrote it and the one-worker run did not.
        only_in_cluster: bool,
    },
}

/// The outcome of a cluster test.
#[derive(Clone, Debug)]
pub struct Verdict {
    /// Every output file by name, sorted, with how it compares.
    pub files: Vec<(String, Comparison)>,
    /// Wall seconds from the start until the last cluster process ended.
    pub cluster_s: f64,
    /// Wall seconds from the start until the one-worker run ended (it runs beside the
    /// cluster, so both figures include the other's load).
    pub single_s: f64,
    /// Where the outputs were kept, if they were.
    pub kept: Option<PathBuf>,
}

impl Verdict {
    /// Whether every file is identical (and there is at least one).
    pub fn identical(&self) -> bool {
        !self.files.is_empty()
            && self
                .files
                .iter()
                .all(|(_, c)| matches!(c, Comparison::Identical { .. }))
    }

    /// The one-screen report: one line per file, then the verdict.
    pub fn text(&self, options: &ClusterTestOptions) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "behave cluster-test: {} on {} processes x {} workers vs 1 worker",
            options.spec.display(),
            options.processes,
            options.workers
        );
        for (name, comparison) in &self.files {
            let _ = match comparison {
                Comparison::Identical { lines } => {
                    writeln!(text, "  {name:32} identical ({lines} lines)")
                }
                Comparison::Differs {
                    line: 0,
                    single,
                    cluster,
                } => writeln!(
                    text,
                    "  {name:32} DIFFERS: {single}\n  {:32}          vs {cluster}",
                    ""
                ),
                Comparison::Differs {
                    line,
                    single,
                    cluster,
                } => writeln!(
                    text,
                    "  {name:32} DIFFERS at line {line}:\n  {:32}   1 worker: {single}\n  {:32}   cluster:  {cluster}",
                    "", ""
                ),
                Comparison::Missing { only_in_cluster } => writeln!(
                    text,
                    "  {name:32} MISSING from the {} output",
                    if *only_in_cluster { "1-worker" } else { "cluster" }
                ),
            };
        }
        let differing = self
            .files
            .iter()
            .filter(|(_, c)| !matches!(c, Comparison::Identical { .. }))
            .count();
        let _ = writeln!(
            text,
            "  (summary.json compared without {})",
            SUMMARY_FIELDS_IGNORED.join(", ")
        );
        if let Some(dir) = &self.kept {
            let _ = writeln!(
                text,
                "  outputs, hostfile and logs kept in {}",
                dir.display()
            );
        }
        let _ = writeln!(
            text,
            "{}: {} files compared, {} differ (cluster {:.2} s, 1 worker {:.2} s)",
            if self.identical() {
                "IDENTICAL"
            } else {
                "DIFFERENT"
            },
            self.files.len(),
            differing,
            self.cluster_s,
            self.single_s
        );
        text
    }
}

/// Runs the test: the cluster and the one-worker run side by side, then the comparison.
pub fn cluster_test(options: &ClusterTestOptions) -> Result<Verdict, ClusterTestError> {
    if options.processes < 2 {
        return Err(ClusterTestError::Flags(
            "--processes must be at least 2 (a cluster)".into(),
        ));
    }
    if options.workers == 0 {
        return Err(ClusterTestError::Flags(
            "--workers must be at least 1".into(),
        ));
    }
    crate::spec::Spec::load(&options.spec)?;
    let dir = match &options.keep {
        Some(dir) => dir.clone(),
        None => unique_temp_dir(),
    };
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ClusterTestError::Io { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    // The ports are free when picked but released before the processes bind them, so another
    // program can take one in between: then start again on fresh ports (a few times).
    let mut result = run_and_compare(options, &dir);
    for _ in 0..2 {
        match &result {
            Err(ClusterTestError::Failed { stderr, .. })
                if stderr.contains("Address already in use") =>
            {
                result = run_and_compare(options, &dir);
            }
            _ => break,
        }
    }
    if options.keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// A directory name under the system's temporary directory that no other run uses.
fn unique_temp_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    std::env::temp_dir().join(format!(
        "behave-cluster-test-{}-{nanos}-{n}",
        std::process::id()
    ))
}

/// `count` distinct free loopback ports: bound together (so they differ), read, released.
pub fn free_ports(count: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// One started run: its name, process and where its stderr goes.
struct Run {
    name: String,
    child: Child,
    stderr: PathBuf,
    ended: Option<(ExitStatus, Instant)>,
}

fn run_and_compare(options: &ClusterTestOptions, dir: &Path) -> Result<Verdict, ClusterTestError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ClusterTestError::Io { path, source }
    };
    let ports = free_ports(options.processes).map_err(io(Path::new("127.0.0.1:0")))?;
    let hostfile = dir.join("hosts");
    let hosts: String = ports.iter().map(|p| format!("127.0.0.1:{p}\n")).collect();
    std::fs::write(&hostfile, hosts).map_err(io(&hostfile))?;
    let single_out = dir.join("single");
    let cluster_out = dir.join("cluster");
    for out in [&single_out, &cluster_out] {
        if out.exists() {
            std::fs::remove_dir_all(out).map_err(io(out))?;
        }
    }
    let start = Instant::now();
    let mut runs = Vec::new();
    let workers = options.workers.to_string();
    let processes = options.processes.to_string();
    let hostfile_arg = hostfile.display().to_string();
    for p in 0..options.processes {
        let index = p.to_string();
        let name = format!("process {p} of {}", options.processes);
        let cluster_args = [
            "-w",
            workers.as_str(),
            "-n",
            processes.as_str(),
            "-p",
            index.as_str(),
            "-h",
            hostfile_arg.as_str(),
        ];
        let run = start_run(
            options,
            dir,
            name,
            &format!("process-{p}"),
            &cluster_out,
            &cluster_args,
        )?;
        runs.push(run);
    }
    let single = start_run(
        options,
        dir,
        "the one-worker run".into(),
        "single",
        &single_out,
        &["-w", "1"],
    );
    match single {
        Ok(run) => runs.push(run),
        Err(e) => {
            stop(&mut runs);
            return Err(e);
        }
    }
    wait_all(&mut runs, options.timeout)?;
    let ended = |run: &Run| {
        run.ended
            .map_or(0.0, |(_, at)| at.duration_since(start).as_secs_f64())
    };
    let single_s = runs.last().map_or(0.0, ended);
    let cluster_s = runs[..options.processes]
        .iter()
        .map(ended)
        .fold(0.0, f64::max);
    let files = compare_dirs(&single_out, &cluster_out)?;
    Ok(Verdict {
        files,
        cluster_s,
        single_s,
        kept: options.keep.clone(),
    })
}

/// Starts `behave replay` writing to `out`, with stdout (timely's connection chatter in a
/// cluster) and stderr captured in `dir/<log>.stdout` and `.stderr`.
fn start_run(
    options: &ClusterTestOptions,
    dir: &Path,
    name: String,
    log: &str,
    out: &Path,
    extra: &[&str],
) -> Result<Run, ClusterTestError> {
    let stdout_path = dir.join(format!("{log}.stdout"));
    let stderr_path = dir.join(format!("{log}.stderr"));
    let create = |path: &Path| {
        std::fs::File::create(path).map_err(|source| ClusterTestError::Io {
            path: path.to_owned(),
            source,
        })
    };
    let stdout = create(&stdout_path)?;
    let stderr = create(&stderr_path)?;
    let mut command = Command::new(&options.exe);
    command
        .arg("replay")
        .arg(&options.spec)
        .arg("--out")
        .arg(out);
    if options.changes {
        command.arg("--changes").arg(out.join(CHANGES_FILE));
    }
    if let Some(events) = &options.events {
        command.arg("--events").arg(events);
    }
    if let Some(forget) = &options.forget {
        command.arg("--forget").arg(forget);
    }
    command
        .args(extra)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    let child = command.spawn().map_err(|source| ClusterTestError::Spawn {
        run: name.clone(),
        source,
    })?;
    Ok(Run {
        name,
        child,
        stderr: stderr_path,
        ended: None,
    })
}

/// Kills every run still going.
fn stop(runs: &mut [Run]) {
    for run in runs.iter_mut().filter(|r| r.ended.is_none()) {
        let _ = run.child.kill();
        let _ = run.child.wait();
    }
}

/// Waits for every run; stops the others at the first failure or at the timeout.
fn wait_all(runs: &mut [Run], timeout: Duration) -> Result<(), ClusterTestError> {
    let deadline = Instant::now() + timeout;
    loop {
        for i in 0..runs.len() {
            if runs[i].ended.is_some() {
                continue;
            }
            let status = runs[i].child.try_wait();
            let status = match status {
                Ok(Some(status)) => status,
                Ok(None) => continue,
                Err(source) => {
                    stop(runs);
                    return Err(ClusterTestError::Spawn {
                        run: runs[i].name.clone(),
                        source,
                    });
                }
            };
            runs[i].ended = Some((status, Instant::now()));
            if !status.success() {
                stop(runs);
                let text = std::fs::read_to_string(&runs[i].stderr).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(10)..].join("\n");
                return Err(ClusterTestError::Failed {
                    run: runs[i].name.clone(),
                    status: status.to_string(),
                    stderr: tail,
                });
            }
        }
        if runs.iter().all(|r| r.ended.is_some()) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let late: Vec<String> = runs
                .iter()
                .filter(|r| r.ended.is_none())
                .map(|r| r.name.clone())
                .collect();
            stop(runs);
            return Err(ClusterTestError::Timeout {
                runs: late.join(", "),
                seconds: timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Compares every file of two output directories, by name: byte for byte, except
/// `summary.json`, which is compared as JSON without [`SUMMARY_FIELDS_IGNORED`].
pub fn compare_dirs(
    single: &Path,
    cluster: &Path,
) -> Result<Vec<(String, Comparison)>, ClusterTestError> {
    let names = |dir: &Path| -> Result<std::collections::BTreeSet<String>, ClusterTestError> {
        let fail = |source| ClusterTestError::Io {
            path: dir.to_owned(),
            source,
        };
        let mut names = std::collections::BTreeSet::new();
        for entry in std::fs::read_dir(dir).map_err(fail)? {
            let entry = entry.map_err(fail)?;
            if entry.file_type().map_err(fail)?.is_file() {
                names.insert(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    };
    let in_single = names(single)?;
    let in_cluster = names(cluster)?;
    let mut files = Vec::new();
    for name in in_single.union(&in_cluster) {
        let comparison = match (in_single.contains(name), in_cluster.contains(name)) {
            (true, true) => {
                let read = |dir: &Path| {
                    let path = dir.join(name);
                    std::fs::read(&path).map_err(|source| ClusterTestError::Io { path, source })
                };
                let (a, b) = (read(single)?, read(cluster)?);
                if name == "summary.json" {
                    compare_summaries(&a, &b)
                } else {
                    compare_bytes(&a, &b)
                }
            }
            (only_in_single, _) => Comparison::Missing {
                only_in_cluster: !only_in_single,
            },
        };
        files.push((name.clone(), comparison));
    }
    Ok(files)
}

/// Byte comparison, reporting the first differing line.
fn compare_bytes(single: &[u8], cluster: &[u8]) -> Comparison {
    let lines = |bytes: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let (a, b) = (lines(single), lines(cluster));
    if single == cluster {
        return Comparison::Identical { lines: a.len() };
    }
    let line = (0..a.len().max(b.len()))
        .find(|&i| a.get(i) != b.get(i))
        // Same lines, different bytes: line endings or a final newline.
        .unwrap_or(a.len().max(b.len()).saturating_sub(1));
    Comparison::Differs {
        line: line + 1,
        single: a.get(line).cloned().unwrap_or_default(),
        cluster: b.get(line).cloned().unwrap_or_default(),
    }
}

/// JSON comparison of two summaries without the fields that describe the run's shape.
fn compare_summaries(single: &[u8], cluster: &[u8]) -> Comparison {
    let parse = |bytes: &[u8]| serde_json::from_slice::<serde_json::Value>(bytes);
    let (Ok(mut a), Ok(mut b)) = (parse(single), parse(cluster)) else {
        return compare_bytes(single, cluster);
    };
    for field in SUMMARY_FIELDS_IGNORED {
        for value in [&mut a, &mut b] {
            remove_field(value, field);
        }
    }
    if a == b {
        return Comparison::Identical {
            lines: String::from_utf8_lossy(single).lines().count(),
        };
    }
    let (key, x, y) = first_difference("", &a, &b).unwrap_or_default();
    Comparison::Differs {
        line: 0,
        single: format!("{key} = {x} (1 worker)"),
        cluster: format!("{key} = {y} (cluster)"),
    }
}

fn remove_field(value: &mut serde_json::Value, dotted: &str) {
    match dotted.split_once('.') {
        Some((head, rest)) => {
            if let Some(inner) = value.get_mut(head) {
                remove_field(inner, rest);
            }
        }
        None => {
            if let Some(object) = value.as_object_mut() {
                object.remove(dotted);
            }
        }
    }
}

/// The first differing field `(dotted key, one value, other value)`, depth first.
fn first_difference(
    prefix: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
) -> Option<(String, String, String)> {
    if a == b {
        return None;
    }
    if let (Some(x), Some(y)) = (a.as_object(), b.as_object()) {
        let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
        for key in keys {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            let null = serde_json::Value::Null;
            let (u, v) = (x.get(key).unwrap_or(&null), y.get(key).unwrap_or(&null));
            if let Some(found) = first_difference(&path, u, v) {
                return Some(found);
            }
        }
    }
    Some((prefix.to_string(), a.to_string(), b.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> PathBuf {
        let dir = unique_temp_dir();
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn identical_outputs_compare_identical_and_summaries_ignore_the_run_shape() {
        let single = dir_with(&[
            ("a.csv", "x,y\n1,2\n"),
            (
                "summary.json",
                r#"{"read":3,"workers":1,"elapsed_s":1.5,"forget_audit":{"traces":3,"users":1}}"#,
            ),
        ]);
        let cluster = dir_with(&[
            ("a.csv", "x,y\n1,2\n"),
            (
                "summary.json",
                r#"{"read":3,"workers":4,"elapsed_s":0.5,"forget_audit":{"traces":6,"users":1}}"#,
            ),
        ]);
        let files = compare_dirs(&single, &cluster).unwrap();
        assert_eq!(
            files,
            vec![
                ("a.csv".into(), Comparison::Identical { lines: 2 }),
                ("summary.json".into(), Comparison::Identical { lines: 1 }),
            ]
        );
        let _ = std::fs::remove_dir_all(single);
        let _ = std::fs::remove_dir_all(cluster);
    }

    #[test]
    fn differences_name_the_first_line_the_field_and_missing_files() {
        let single = dir_with(&[
            ("a.csv", "x,y\n1,2\n3,4\n"),
            ("b.csv", "only here\n"),
            ("c.csv", "no newline"),
            ("summary.json", r#"{"read":3,"forget_audit":{"users":1}}"#),
        ]);
        let cluster = dir_with(&[
            ("a.csv", "x,y\n1,2\n3,5\n"),
            ("c.csv", "no newline\n"),
            ("summary.json", r#"{"read":3,"forget_audit":{"users":2}}"#),
        ]);
        let files = compare_dirs(&single, &cluster).unwrap();
        assert_eq!(
            files,
            vec![
                (
                    "a.csv".into(),
                    Comparison::Differs {
                        line: 3,
                        single: "3,4".into(),
                        cluster: "3,5".into()
                    }
                ),
                (
                    "b.csv".into(),
                    Comparison::Missing {
                        only_in_cluster: false
                    }
                ),
                (
                    "c.csv".into(),
                    Comparison::Differs {
                        line: 1,
                        single: "no newline".into(),
                        cluster: "no newline".into()
                    }
                ),
                (
                    "summary.json".into(),
                    Comparison::Differs {
                        line: 0,
                        single: "forget_audit.users = 1 (1 worker)".into(),
                        cluster: "forget_audit.users = 2 (cluster)".into()
                    }
                ),
            ]
        );
        let verdict = Verdict {
            files,
            cluster_s: 1.0,
            single_s: 1.0,
            kept: None,
        };
        assert!(!verdict.identical());
        let options = ClusterTestOptions {
            exe: PathBuf::from("behave"),
            spec: PathBuf::from("s.toml"),
            processes: 2,
            workers: 1,
            events: None,
            forget: None,
            keep: None,
            timeout: Duration::from_secs(1),
            changes: true,
        };
        let text = verdict.text(&options);
        assert!(
            text.contains("DIFFERENT: 4 files compared, 4 differ"),
            "{text}"
        );
        assert!(text.contains("DIFFERS at line 3"), "{text}");
        let _ = std::fs::remove_dir_all(single);
        let _ = std::fs::remove_dir_all(cluster);
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(4).unwrap();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), 4);
    }
}
