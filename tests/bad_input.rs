//! Bad input, end to end: every kind of unusable file, row and spec, run through the library
//! (`Spec::parse` / `Spec::load` and `replay`) on small temporary files.
//!
//! Every successful replay is checked for `read == accepted + duplicates + rejected`, and for
//! `rejected.csv` holding exactly `rejected` event rows and `forget_rejected` forget rows.

use behave::ingest::IngestError;
use behave::output::Summary;
use behave::privacy::Pseudonymizer;
use behave::replay::{replay, ReplayError, ReplayOptions, ReplayOutcome};
use behave::runtime::Cluster;
use behave::spec::{Spec, SpecError};
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// An environment variable nobody sets, so the key always comes from the spec's `input.key`.
const KEY_ENV: &str = "BEHAVE_TEST_KEY_UNSET_BAD_INPUT_5B1E";
const KEY: &str = "test-key";
/// The CSV header every event file here uses (unless a test is about the header).
const HEADER: &str = "id,user,email,time,event,item,value";

/// The pseudonym of a raw user id under the test key, as written in output files.
fn pseudonym(raw: &str) -> String {
    Pseudonymizer::new(KEY.as_bytes())
        .pseudonym(raw)
        .to_string()
}

/// One row of `rejected.csv`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Rejected {
    source: String,
    line: u64,
    reason: String,
    detail: String,
    raw: String,
}

/// A successful replay, checked for the counting invariant.
struct Run {
    summary: Summary,
    rejected: Vec<Rejected>,
    tables: Vec<behave::output::Table>,
}

impl Run {
    /// `(line, reason)` of the rejected rows of `source` ("events" or "forget"), in file order.
    fn reasons(&self, source: &str) -> Vec<(u64, &str)> {
        self.rejected
            .iter()
            .filter(|r| r.source == source)
            .map(|r| (r.line, r.reason.as_str()))
            .collect()
    }

    /// The rejected row of the event file at `line`.
    fn at(&self, line: u64) -> &Rejected {
        self.rejected
            .iter()
            .find(|r| r.source == "events" && r.line == line)
            .unwrap_or_else(|| panic!("no rejected event row at line {line}: {:?}", self.rejected))
    }

    /// The rows of a view table.
    fn table(&self, view: &str) -> &[Vec<String>] {
        self.tables
            .iter()
            .find(|t| t.name == view)
            .map(|t| t.rows.as_slice())
            .unwrap_or_else(|| panic!("no table {view}"))
    }
}

/// A temporary directory holding the input files and the out dir of one test.
struct Case {
    dir: TempDir,
}

impl Case {
    fn new() -> Case {
        Case {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn out(&self) -> PathBuf {
        self.path("out")
    }

    /// Writes a file into the case directory and returns its absolute path.
    fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).expect("write input file");
        path
    }

    /// Spec text mapping [`HEADER`] (`email` is PII), with absolute input paths, both views, and
    /// `extra` lines appended to `[input]`.
    fn spec_text(&self, events: &Path, forget: Option<&Path>, extra: &str) -> String {
        let forget = forget
            .map(|f| format!("forget = '{}'\n", f.display()))
            .unwrap_or_default();
        format!(
            "name = \"bad-input\"\ntick = \"1h\"\n\n[input]\nevents = '{}'\n{forget}\
             user = \"user\"\ntime = \"time\"\nevent = \"event\"\nitem = \"item\"\nid = \"id\"\n\
             value = \"value\"\npii = [\"email\"]\nkey = \"{KEY}\"\nkey_env = \"{KEY_ENV}\"\n{extra}\n\n\
             [sessions]\ngap = \"30m\"\n\n[engagement]\nutc_offset = \"+00:00\"\n",
            events.display()
        )
    }

    fn spec(&self, events: &Path, forget: Option<&Path>, extra: &str) -> Spec {
        let text = self.spec_text(events, forget, extra);
        Spec::parse(&text, &self.path("spec.toml"))
            .unwrap_or_else(|e| panic!("test spec must parse: {e}\n{text}"))
    }

    fn replay_with(&self, spec: Spec, reveal_ids: bool) -> Result<ReplayOutcome, ReplayError> {
        replay(ReplayOptions {
            spec,
            events: None,
            forget: None,
            out: Some(self.out()),
            changes: None,
            reveal_ids,
            as_of: None,
            cluster: Cluster::local(1),
            progress: false,
            started: None,
        })
    }

    fn replay(&self, spec: Spec) -> Result<ReplayOutcome, ReplayError> {
        self.replay_with(spec, false)
    }

    /// Replays, expecting success; checks the invariant and reads back `rejected.csv`.
    fn run_with(&self, spec: Spec, reveal_ids: bool) -> Run {
        let outcome = self
            .replay_with(spec, reveal_ids)
            .unwrap_or_else(|e| panic!("replay failed: {e}"));
        let summary = outcome.summary;
        assert_invariant(&summary);
        let mut reader =
            csv::Reader::from_path(self.out().join("rejected.csv")).expect("rejected.csv");
        assert_eq!(
            reader.headers().expect("header"),
            vec!["source", "line", "reason", "detail", "raw"]
        );
        let rejected: Vec<Rejected> = reader
            .records()
            .map(|record| {
                let record = record.expect("rejected.csv record");
                assert_eq!(record.len(), 5, "{record:?}");
                Rejected {
                    source: record[0].to_string(),
                    line: record[1].parse().expect("line number"),
                    reason: record[2].to_string(),
                    detail: record[3].to_string(),
                    raw: record[4].to_string(),
                }
            })
            .collect();
        let count = |source: &str| rejected.iter().filter(|r| r.source == source).count() as u64;
        assert_eq!(
            count("events"),
            summary.rejected,
            "rejected.csv vs summary: {rejected:?}"
        );
        assert_eq!(count("forget"), summary.forget_rejected, "{rejected:?}");
        assert_eq!(
            count("events") + count("forget"),
            rejected.len() as u64,
            "unknown source in {rejected:?}"
        );
        let late = rejected
            .iter()
            .filter(|r| r.source == "events" && r.reason == "late")
            .count() as u64;
        let forgotten = rejected
            .iter()
            .filter(|r| r.source == "events" && r.reason == "forgotten")
            .count() as u64;
        assert_eq!(late, summary.late);
        assert_eq!(forgotten, summary.forgotten_rejected);
        Run {
            summary,
            rejected,
            tables: outcome.tables,
        }
    }

    fn run(&self, spec: Spec) -> Run {
        self.run_with(spec, false)
    }

    /// Every file written to the out dir, as `(name, text)`.
    fn out_files(&self) -> Vec<(String, String)> {
        let mut files: Vec<(String, String)> = std::fs::read_dir(self.out())
            .expect("out dir")
            .map(|entry| {
                let path = entry.expect("dir entry").path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&path).expect("output file"))
            })
            .collect();
        files.sort();
        files
    }
}

/// Every row read is accepted, a duplicate, or rejected; `late` and `forgotten` are rejections.
fn assert_invariant(s: &Summary) {
    assert_eq!(
        s.read,
        s.accepted + s.duplicates + s.rejected,
        "read != accepted + duplicates + rejected: {s:?}"
    );
    assert!(s.late + s.forgotten_rejected <= s.rejected, "{s:?}");
}

/// The `(read, accepted, duplicates, rejected)` of a summary.
fn counts(s: &Summary) -> (u64, u64, u64, u64) {
    (s.read, s.accepted, s.duplicates, s.rejected)
}

// ---------------------------------------------------------------------------------------------
// Unusable files
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_events_file_is_an_error_naming_the_path() {
    let case = Case::new();
    let missing = case.path("no-such-events.csv");
    let error = case
        .replay(case.spec(&missing, None, ""))
        .err()
        .expect("a missing event file must fail");
    match &error {
        ReplayError::Ingest(IngestError::Open { path, source }) => {
            assert_eq!(path, &missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected IngestError::Open, got {other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.contains(&missing.display().to_string()),
        "{message}"
    );
    assert!(message.starts_with("cannot read "), "{message}");
    assert!(!case.out().exists(), "nothing may be written on failure");
}

#[test]
fn missing_forget_file_is_an_error_naming_the_path() {
    let case = Case::new();
    let events = case.write(
        "events.csv",
        format!("{HEADER}\ne1,u1,u1@pii.test,2024-01-01 10:00:00,view,i1,\n"),
    );
    let missing = case.path("no-such-forget.csv");
    let error = case
        .replay(case.spec(&events, Some(&missing), ""))
        .err()
        .expect("a missing forget file must fail");
    match &error {
        ReplayError::Ingest(IngestError::Open { path, source }) => {
            assert_eq!(path, &missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected IngestError::Open, got {other:?}"),
    }
    assert!(error.to_string().contains(&missing.display().to_string()));
    assert!(!case.out().exists());

    // The same through the `forget` override of ReplayOptions, with a spec without a forget file.
    let overridden = replay(ReplayOptions {
        spec: case.spec(&events, None, ""),
        events: None,
        forget: Some(missing.clone()),
        out: Some(case.out()),
        changes: None,
        reveal_ids: false,
        as_of: None,
        cluster: Cluster::local(1),
        progress: false,
        started: None,
    });
    match overridden {
        Err(ReplayError::Ingest(IngestError::Open { path, .. })) => assert_eq!(path, missing),
        Err(other) => panic!("expected IngestError::Open, got {other:?}"),
        Ok(_) => panic!("a missing forget file given as an option must fail"),
    }
}

#[test]
fn unreadable_input_files_are_errors_naming_the_path() {
    // Tests may run as root, where permissions do not stop reading: a directory is unreadable
    // as a file for everyone.
    let case = Case::new();
    let events = case.write(
        "events.csv",
        format!("{HEADER}\ne1,u1,u1@pii.test,2024-01-01 10:00:00,view,i1,\n"),
    );
    let directory = case.path("a-directory.csv");
    std::fs::create_dir(&directory).unwrap();
    let shown = directory.display().to_string();

    let error = case
        .replay(case.spec(&events, Some(&directory), ""))
        .err()
        .expect("a forget file that is a directory must fail");
    assert!(matches!(error, ReplayError::Ingest(_)), "{error:?}");
    assert!(error.to_string().contains(&shown), "{error}");

    let error = case
        .replay(case.spec(&directory, None, ""))
        .err()
        .expect("a CSV event file that is a directory must fail");
    assert!(matches!(error, ReplayError::Ingest(_)), "{error:?}");
    assert!(error.to_string().contains(&shown), "{error}");

    let error = case
        .replay(case.spec(&directory, None, "format = \"jsonl\""))
        .err()
        .expect("a JSONL event file that is a directory must fail");
    assert!(matches!(error, ReplayError::Ingest(_)), "{error:?}");
    assert!(error.to_string().contains(&shown), "{error}");
    assert!(!case.out().exists());
}

#[test]
fn header_without_a_mapped_column_names_the_column_and_the_key() {
    let case = Case::new();
    // `user` is called `learner` here.
    let events = case.write(
        "events.csv",
        "id,learner,email,time,event,item,value\ne1,u1,u1@pii.test,2024-01-01 10:00:00,view,i1,\n",
    );
    let error = case
        .replay(case.spec(&events, None, ""))
        .err()
        .expect("must fail");
    match &error {
        ReplayError::Ingest(IngestError::MissingColumn {
            path,
            column,
            key,
            found,
        }) => {
            assert_eq!(path, &events);
            assert_eq!(column, "user");
            assert_eq!(key, "input.user");
            assert_eq!(found, "id, learner, email, time, event, item, value");
        }
        other => panic!("expected MissingColumn, got {other:?}"),
    }
    let message = error.to_string();
    assert!(message.contains(&events.display().to_string()), "{message}");
    assert!(message.contains("line 1"), "{message}");
    assert!(message.contains("\"user\""), "{message}");
    assert!(message.contains("`input.user`"), "{message}");

    // An optional mapped column (`value`) missing from the header is just as fatal.
    let events = case.write(
        "no-value.csv",
        "id,user,email,time,event,item\ne1,u1,u1@pii.test,2024-01-01 10:00:00,view,i1\n",
    );
    match case.replay(case.spec(&events, None, "")) {
        Err(ReplayError::Ingest(IngestError::MissingColumn { column, key, .. })) => {
            assert_eq!((column.as_str(), key.as_str()), ("value", "input.value"));
        }
        Err(other) => panic!("expected MissingColumn, got {other:?}"),
        Ok(_) => panic!("a header without the value column must fail"),
    }

    // So is a missing property column.
    let events = case.write(
        "props.csv",
        format!("{HEADER}\ne1,u1,u1@pii.test,2024-01-01 10:00:00,view,i1,\n"),
    );
    match case.replay(case.spec(&events, None, "properties = [\"course\"]")) {
        Err(ReplayError::Ingest(IngestError::MissingColumn { column, key, .. })) => {
            assert_eq!(
                (column.as_str(), key.as_str()),
                ("course", "input.properties")
            );
        }
        Err(other) => panic!("expected MissingColumn, got {other:?}"),
        Ok(_) => panic!("a header without a property column must fail"),
    }

    // And a forget file without its `time` column.
    let forget = case.write("forget.csv", "user,when\nu1,2024-01-01 10:00:00\n");
    match case.replay(case.spec(&events, Some(&forget), "")) {
        Err(ReplayError::Ingest(IngestError::MissingColumn {
            path, column, key, ..
        })) => {
            assert_eq!(path, forget);
            assert_eq!(column, "time");
            assert!(key.contains("forget"), "{key}");
        }
        Err(other) => panic!("expected MissingColumn, got {other:?}"),
        Ok(_) => panic!("a forget file without a time column must fail"),
    }
    assert!(!case.out().exists());
}

#[test]
fn empty_file_is_an_error_naming_the_file() {
    let case = Case::new();
    let empty = case.write("empty.csv", "");

    let error = case
        .replay(case.spec(&empty, None, ""))
        .err()
        .expect("must fail");
    match &error {
        ReplayError::Ingest(IngestError::Empty { path }) => assert_eq!(path, &empty),
        other => panic!("expected IngestError::Empty, got {other:?}"),
    }
    let message = error.to_string();
    assert!(message.contains(&empty.display().to_string()), "{message}");
    assert!(message.contains("empty"), "{message}");

    let error = case
        .replay(case.spec(&empty, None, "format = \"jsonl\""))
        .err()
        .expect("an empty JSONL file must fail");
    match &error {
        ReplayError::Ingest(IngestError::Empty { path }) => assert_eq!(path, &empty),
        other => panic!("expected IngestError::Empty, got {other:?}"),
    }

    // An empty forget file is named as the culprit, not the (fine) event file.
    let events = case.write(
        "events.csv",
        format!("{HEADER}\ne1,u1,u1@pii.test,2024-01-01 10:00:00,view,i1,\n"),
    );
    let empty_forget = case.write("forget.csv", "");
    let error = case
        .replay(case.spec(&events, Some(&empty_forget), ""))
        .err()
        .expect("an empty forget file must fail");
    match &error {
        ReplayError::Ingest(IngestError::Empty { path }) => assert_eq!(path, &empty_forget),
        other => panic!("expected IngestError::Empty, got {other:?}"),
    }
    assert!(error
        .to_string()
        .contains(&empty_forget.display().to_string()));
    assert!(!case.out().exists());
}

#[test]
fn header_only_file_gives_zero_events_and_no_error() {
    let case = Case::new();
    let events = case.write("events.csv", format!("{HEADER}\n"));
    let forget = case.write("forget.csv", "user,time\n");
    let run = case.run(case.spec(&events, Some(&forget), ""));
    assert_eq!(counts(&run.summary), (0, 0, 0, 0));
    assert_eq!(run.summary.forget_requests, 0);
    assert_eq!(run.summary.forget_rejected, 0);
    assert_eq!(run.summary.as_of, None);
    assert!(run.rejected.is_empty());
    assert!(run.table("sessions").is_empty());
    assert!(run.table("engagement").is_empty());
    assert_eq!(
        std::fs::read_to_string(case.out().join("sessions.csv")).unwrap(),
        "user,session_start,session_end,events\n"
    );
    assert_eq!(
        std::fs::read_to_string(case.out().join("tombstones.csv")).unwrap(),
        "pseudonym\n"
    );
}

// ---------------------------------------------------------------------------------------------
// Bad rows
// ---------------------------------------------------------------------------------------------

#[test]
fn malformed_csv_rows_are_rejected_with_their_line_and_the_run_continues() {
    let case = Case::new();
    let events = case.write(
        "events.csv",
        format!(
            "{HEADER}\n\
             e1,u1,u1@pii.test,2024-01-01 10:00:00,view,i1,\n\
             e2,u1,u1@pii.test,2024-01-01 10:01:00,view,i1,,surplus\n\
             e3,u1,u1@pii.test\n\
             e4,u1,u1@pii.test,2024-01-01 10:02:00,view,\"two\nlines\",\n\
             e5,u1\n\
             e6,u1,u1@pii.test,2024-01-01 10:03:00,view,i2,1.5\n"
        ),
    );
    let run = case.run(case.spec(&events, None, ""));
    // Records on lines 2, 3, 4, 5-6 (a quoted field spanning two lines), 7 and 8.
    assert_eq!(counts(&run.summary), (6, 3, 0, 3));
    assert_eq!(
        run.reasons("events"),
        vec![(3, "malformed"), (4, "malformed"), (7, "malformed")]
    );
    assert_eq!(run.at(3).detail, "expected 7 fields, found 8");
    assert_eq!(run.at(4).detail, "expected 7 fields, found 3");
    assert_eq!(run.at(7).detail, "expected 7 fields, found 2");
    // Fields of a row of the wrong width cannot be told apart: none of them is kept.
    assert_eq!(run.at(3).raw, "");
    assert_eq!(run.at(7).raw, "");
    let u1 = pseudonym("u1");
    // The rows around the bad ones made it into the views: 10:00, 10:02 and 10:03.
    assert_eq!(
        run.table("sessions"),
        [vec![
            u1.clone(),
            "2024-01-01T10:00:00Z".to_string(),
            "2024-01-01T10:03:00Z".to_string(),
            "3".to_string(),
        ]]
    );
}

#[test]
fn malformed_json_lines_are_rejected_and_the_run_continues() {
    let case = Case::new();
    let events = case.write(
        "events.jsonl",
        concat!(
            r#"{"id":"j1","user":"u1","email":"u1@pii.test","time":"2024-01-01 10:00:00","event":"view"}"#,
            "\n",
            r#"{"id":"j2","user":"u1","time":"2024-01-01 10:01:00","event":"view""#,
            "\n",
            r#"[{"id":"j3","user":"u1","time":"2024-01-01 10:02:00","event":"view"}]"#,
            "\n",
            "\n",
            r#""just a string""#,
            "\n",
            "42\n",
            "not json at all\n",
            r#"{"id":"j8","user":"u1","email":"u1@pii.test","time":"2024-01-01 10:05:00","event":"view"}"#,
            "\n",
        ),
    );
    let run = case.run(case.spec(&events, None, "format = \"jsonl\""));
    // Eight lines, one of them blank (skipped, not a row, but still counted as a line).
    assert_eq!(counts(&run.summary), (7, 2, 0, 5));
    assert_eq!(
        run.reasons("events"),
        vec![
            (2, "malformed"),
            (3, "malformed"),
            (5, "malformed"),
            (6, "malformed"),
            (7, "malformed"),
        ]
    );
    assert!(
        run.at(2).detail.starts_with("invalid JSON"),
        "{:?}",
        run.at(2)
    );
    assert_eq!(run.at(3).detail, "expected a JSON object");
    assert_eq!(run.at(5).detail, "expected a JSON object");
    assert_eq!(run.at(6).detail, "expected a JSON object");
    assert!(
        run.at(7).detail.starts_with("invalid JSON"),
        "{:?}",
        run.at(7)
    );
    // Unparseable rows keep no raw text at all.
    assert!(
        run.rejected.iter().all(|r| r.raw.is_empty()),
        "{:?}",
        run.rejected
    );
    assert_eq!(
        run.table("sessions"),
        [vec![
            pseudonym("u1"),
            "2024-01-01T10:00:00Z".to_string(),
            "2024-01-01T10:05:00Z".to_string(),
            "2".to_string(),
        ]]
    );
}

#[test]
fn valid_jsonl_with_numeric_time_and_value_is_accepted() {
    let case = Case::new();
    // 1704103200 is 2024-01-01T10:00:00Z.
    let events = case.write(
        "events.jsonl",
        concat!(
            r#"{"id":"j1","user":"u1","email":"u1@pii.test","time":1704103200,"event":"view","item":"i1","value":0.5}"#,
            "\n",
            r#"{"id":"j2","user":"u1","email":"u1@pii.test","time":1704103800.0,"event":"quiz","item":7,"value":3}"#,
            "\r\n",
            r#"{"id":3,"user":42,"time":"2024-01-01T11:20:00+01:00","event":"view","value":null,"extra":{"a":[1]}}"#,
            "\n",
            r#"  {"user":"u2","time":1704110400,"event":"view","value":"-2.25"}  "#,
        ),
    );
    let run = case.run(case.spec(&events, None, "format = \"jsonl\""));
    assert!(run.rejected.is_empty(), "{:?}", run.rejected);
    assert_eq!(counts(&run.summary), (4, 4, 0, 0));
    assert_eq!(run.summary.as_of.as_deref(), Some("2024-01-01T12:00:00Z"));
    let mut expected = vec![
        vec![
            pseudonym("u1"),
            "2024-01-01T10:00:00Z".to_string(),
            "2024-01-01T10:10:00Z".to_string(),
            "2".to_string(),
        ],
        // A numeric user id is a user id like any other.
        vec![
            pseudonym("42"),
            "2024-01-01T10:20:00Z".to_string(),
            "2024-01-01T10:20:00Z".to_string(),
            "1".to_string(),
        ],
        vec![
            pseudonym("u2"),
            "2024-01-01T12:00:00Z".to_string(),
            "2024-01-01T12:00:00Z".to_string(),
            "1".to_string(),
        ],
    ];
    expected.sort();
    assert_eq!(run.table("sessions"), expected.as_slice());
}

#[test]
fn bad_fields_are_rejected_with_their_reason() {
    let case = Case::new();
    let events = case.write(
        "events.csv",
        format!(
            "{HEADER}\n\
             b1,u1,u1@pii.test,2024-01-01 10:00:00,view,i1,\n\
             b2,u1,u1@pii.test,yesterday,view,i1,\n\
             b3,u1,u1@pii.test,1969-12-31 23:59:59,view,i1,\n\
             b4,,u1@pii.test,2024-01-01 10:01:00,view,i1,\n\
             b5,   ,u1@pii.test,2024-01-01 10:01:00,view,i1,\n\
             b6,u1,u1@pii.test,2024-01-01 10:02:00,,i1,\n\
             b7,u1,u1@pii.test,2024-01-01 10:03:00,view,i1,abc\n\
             b8,u1,u1@pii.test,2024-01-01 10:03:00,view,i1,NaN\n\
             b9,u1,u1@pii.test,,view,i1,\n\
             b10,u1,u1@pii.test,2024-01-01 10:05:00,view,i1,  2.5 \n\
             b11,u1,u1@pii.test,2024-13-01 10:05:00,view,i1,\n\
             b12,u1,u1@pii.test,2024-01-01 10:06:00, \t ,i1,\n"
        ),
    );
    let run = case.run(case.spec(&events, None, ""));
    assert_eq!(counts(&run.summary), (12, 2, 0, 10));
    assert_eq!(
        run.reasons("events"),
        vec![
            (3, "bad_time"),
            (4, "bad_time"),
            (5, "empty_user"),
            (6, "empty_user"),
            (7, "empty_event"),
            (8, "bad_value"),
            (9, "bad_value"),
            (10, "bad_time"),
            (12, "bad_time"),
            (13, "empty_event"),
        ]
    );
    assert_eq!(
        run.at(3).detail,
        "\"yesterday\" is not RFC 3339, \"YYYY-MM-DD HH:MM:SS\" or unix seconds"
    );
    assert_eq!(run.at(4).detail, "\"1969-12-31 23:59:59\" is before 1970");
    assert_eq!(run.at(5).detail, "the user id is empty");
    assert_eq!(run.at(7).detail, "the event type is empty");
    assert_eq!(run.at(8).detail, "\"abc\" is not a number");
    assert_eq!(run.at(9).detail, "\"NaN\" is not a number");
    // Redacted raw rows: pseudonym instead of the user, PII column emptied, the rest as read.
    let u1 = pseudonym("u1");
    assert_eq!(run.at(3).raw, format!("b2,{u1},,yesterday,view,i1,"));
    assert_eq!(run.at(5).raw, "b4,,,2024-01-01 10:01:00,view,i1,");
    assert_eq!(
        run.at(8).raw,
        format!("b7,{u1},,2024-01-01 10:03:00,view,i1,abc")
    );
    assert_eq!(
        run.table("sessions"),
        [vec![
            u1,
            "2024-01-01T10:00:00Z".to_string(),
            "2024-01-01T10:05:00Z".to_string(),
            "2".to_string(),
        ]]
    );
}

#[test]
fn bad_fields_in_json_lines_are_rejected_with_their_reason() {
    let case = Case::new();
    let events = case.write(
        "events.jsonl",
        [
            r#"{"id":"k1","user":"u1","email":"u1@pii.test","time":"2024-01-01 10:00:00","event":"view"}"#,
            r#"{"id":"k2","user":"","email":"u1@pii.test","time":"2024-01-01 10:01:00","event":"view"}"#,
            r#"{"id":"k3","user":null,"email":"u1@pii.test","time":"2024-01-01 10:01:00","event":"view"}"#,
            r#"{"id":"k4","email":"u1@pii.test","time":"2024-01-01 10:01:00","event":"view"}"#,
            r#"{"id":"k5","user":"u1","email":"u1@pii.test","time":"soon","event":"view"}"#,
            r#"{"id":"k6","user":"u1","email":"u1@pii.test","time":-60,"event":"view"}"#,
            r#"{"id":"k7","user":"u1","email":"u1@pii.test","time":"2024-01-01 10:02:00","event":""}"#,
            r#"{"id":"k8","user":"u1","email":"u1@pii.test","time":"2024-01-01 10:02:00"}"#,
            r#"{"id":"k9","user":"u1","email":"u1@pii.test","time":"2024-01-01 10:03:00","event":"view","value":"x"}"#,
            r#"{"id":"k10","user":"u1","email":"u1@pii.test","time":"2024-01-01 10:03:00","event":"view","value":true}"#,
            r#"{"id":"k11","user":"u1","email":"u1@pii.test","time":"2024-01-01 10:04:00","event":"view","value":1e400}"#,
            r#"{"id":"k12","user":"u1","email":"u1@pii.test","time":"2024-01-01 10:05:00","event":"view","value":"7"}"#,
        ]
        .join("\n"),
    );
    let run = case.run(case.spec(&events, None, "format = \"jsonl\""));
    let reasons = run.reasons("events");
    assert_eq!(
        reasons[..9],
        [
            (2, "empty_user"),
            (3, "missing_field"),
            (4, "missing_field"),
            (5, "bad_time"),
            (6, "bad_time"),
            (7, "empty_event"),
            (8, "missing_field"),
            (9, "bad_value"),
            (10, "bad_value"),
        ]
    );
    // 1e400 does not fit an f64: serde_json refuses it, so the line is not valid JSON.
    assert_eq!(reasons[9..], [(11, "malformed")]);
    assert_eq!(counts(&run.summary), (12, 2, 0, 10));
    assert_eq!(run.at(3).detail, "no user field");
    assert_eq!(run.at(8).detail, "no event field");
    assert_eq!(run.at(6).detail, "\"-60\" is before 1970");
    // The raw JSON keeps the row but not the PII key, and shows the user's pseudonym.
    let raw: serde_json::Value = serde_json::from_str(&run.at(5).raw).expect("raw is JSON");
    assert_eq!(
        raw,
        serde_json::json!({"id": "k5", "user": pseudonym("u1"), "time": "soon", "event": "view"})
    );
    let raw: serde_json::Value = serde_json::from_str(&run.at(2).raw).expect("raw is JSON");
    assert_eq!(
        raw,
        serde_json::json!({"id": "k2", "user": "", "time": "2024-01-01 10:01:00", "event": "view"})
    );
}

#[test]
fn over_long_csv_rows_are_rejected_too_long() {
    let case = Case::new();
    let long_item = "x".repeat(100);
    let huge_item = "y".repeat(3 << 20);
    let events = case.write(
        "events.csv",
        format!(
            "{HEADER}\n\
             t1,u1,u1@pii.test,2024-01-01 10:00:00,view,i1,\n\
             t2,u1,u1@pii.test,2024-01-01 10:01:00,view,{long_item},\n\
             t3,u1,u1@pii.test,2024-01-01 10:02:00,view,i1,\n\
             t4,u1,u1@pii.test,2024-01-01 10:03:00,view,{huge_item},\n\
             t5,u1,u1@pii.test,2024-01-01 10:04:00,view,i1,\n"
        ),
    );
    let run = case.run(case.spec(&events, None, "max_row_bytes = 64"));
    assert_eq!(counts(&run.summary), (5, 3, 0, 2));
    assert_eq!(
        run.reasons("events"),
        vec![(3, "too_long"), (5, "too_long")]
    );
    for line in [3, 5] {
        let rejected = run.at(line);
        assert!(
            rejected.detail.ends_with("bytes exceed max_row_bytes 64"),
            "{rejected:?}"
        );
        assert!(rejected.raw.is_empty(), "over-long rows keep no raw text");
    }
    assert_eq!(run.table("sessions")[0][3], "3");
}

/// A JSON object line of exactly `len` bytes (without the line end).
fn json_line_of_len(id: &str, minute: u32, len: usize) -> String {
    let head = format!(
        r#"{{"id":"{id}","user":"u1","time":"2024-01-01 10:{minute:02}:00","event":"view","item":""#
    );
    let padding = len - head.len() - 2;
    let line = format!("{head}{}\"}}", "p".repeat(padding));
    assert_eq!(line.len(), len);
    line
}

#[test]
fn over_long_json_lines_are_rejected_too_long() {
    let case = Case::new();
    let max = 100;
    let lines = [
        format!("{}\n", json_line_of_len("a1", 0, 80)),
        // Far longer than the reader's buffer: skipped without losing the next line.
        format!("{}\n", json_line_of_len("a2", 1, 3 << 20)),
        format!("{}\n", json_line_of_len("a3", 2, 80)),
        // One byte over.
        format!("{}\n", json_line_of_len("a4", 3, max + 1)),
        // Exactly at the limit, with a CRLF line end: accepted.
        format!("{}\r\n", json_line_of_len("a5", 4, max)),
        // Two bytes over.
        format!("{}\n", json_line_of_len("a6", 5, max + 2)),
        // One byte over, with a CRLF line end.
        format!("{}\r\n", json_line_of_len("a7", 6, max + 1)),
        format!("{}\n", json_line_of_len("a8", 7, max)),
        // The last line, without a line end.
        json_line_of_len("a9", 8, 150),
    ];
    let events = case.write("events.jsonl", lines.concat());
    let run = case.run(case.spec(
        &events,
        None,
        &format!("format = \"jsonl\"\nmax_row_bytes = {max}"),
    ));
    assert_eq!(counts(&run.summary), (9, 4, 0, 5));
    assert_eq!(
        run.reasons("events"),
        vec![
            (2, "too_long"),
            (4, "too_long"),
            (6, "too_long"),
            (7, "too_long"),
            (9, "too_long"),
        ]
    );
    for line in [2, 4, 6, 7, 9] {
        let rejected = run.at(line);
        assert!(
            rejected
                .detail
                .ends_with(&format!("bytes exceed max_row_bytes {max}")),
            "{rejected:?}"
        );
        assert!(rejected.raw.is_empty());
    }
    assert!(
        run.at(2).detail.starts_with(&format!("{} bytes", 3 << 20)),
        "{:?}",
        run.at(2)
    );
    assert_eq!(
        run.at(4).detail,
        format!("{} bytes exceed max_row_bytes {max}", max + 1)
    );
    // Accepted: a1 (10:00), a3 (10:02), a5 (10:04), a8 (10:07).
    assert_eq!(
        run.table("sessions"),
        [vec![
            pseudonym("u1"),
            "2024-01-01T10:00:00Z".to_string(),
            "2024-01-01T10:07:00Z".to_string(),
            "4".to_string(),
        ]]
    );
}

// ---------------------------------------------------------------------------------------------
// Forget files
// ---------------------------------------------------------------------------------------------

#[test]
fn forget_for_an_unknown_user_is_counted_not_an_error() {
    let case = Case::new();
    let events = case.write(
        "events.csv",
        format!(
            "{HEADER}\n\
             f1,u1,u1@pii.test,2024-01-01 10:00:00,view,i1,\n\
             f2,u1,u1@pii.test,2024-01-01 12:00:00,view,i1,\n"
        ),
    );
    // zoe never appears; nobody appears before 09:00 either; ghost only after the data.
    let forget = case.write(
        "forget.csv",
        "user,time\nzoe,2024-01-01 09:00:00\nghost,2024-01-02 00:00:00\n",
    );
    let run = case.run(case.spec(&events, Some(&forget), ""));
    assert_eq!(counts(&run.summary), (2, 2, 0, 0));
    assert_eq!(run.summary.forget_requests, 2);
    assert_eq!(run.summary.forget_unknown, 2);
    assert_eq!(run.summary.forget_rejected, 0);
    assert_eq!(run.summary.forgotten_users, 0);
    assert_eq!(run.summary.retracted_events, 0);
    assert!(run.rejected.is_empty(), "{:?}", run.rejected);
    assert_eq!(run.table("engagement").len(), 1);
    assert_eq!(run.table("engagement")[0][0], pseudonym("u1"));
    assert_eq!(run.table("engagement")[0][1], "2");
}

#[test]
fn bad_forget_rows_are_rejected_and_counted() {
    let case = Case::new();
    let events = case.write(
        "events.csv",
        format!(
            "{HEADER}\n\
             f1,u1,u1@pii.test,2024-01-01 10:00:00,view,i1,\n\
             f2,u2,u2@pii.test,2024-01-01 10:10:00,view,i1,\n"
        ),
    );
    let forget = case.write(
        "forget.csv",
        "user,time\n\
         u1,not-a-time\n\
         u2,\n\
         ,2024-01-01 11:00:00\n\
         u1\n\
         u1,2024-01-01 11:00:00,surplus\n\
         u2,2024-01-01 11:00:00\n\
         u1,-5\n",
    );
    let run = case.run(case.spec(&events, Some(&forget), ""));
    assert_eq!(counts(&run.summary), (2, 2, 0, 0));
    assert_eq!(run.summary.forget_requests, 1);
    assert_eq!(run.summary.forget_rejected, 6);
    assert_eq!(run.summary.forget_unknown, 0);
    assert_eq!(run.summary.forgotten_users, 1);
    assert_eq!(run.summary.retracted_events, 1);
    assert_eq!(
        run.reasons("forget"),
        vec![
            (2, "bad_time"),
            (3, "bad_time"),
            (4, "empty_user"),
            (5, "malformed"),
            (6, "malformed"),
            (8, "bad_time"),
        ]
    );
    let forget_row = |line| {
        run.rejected
            .iter()
            .find(|r| r.source == "forget" && r.line == line)
            .unwrap()
    };
    assert_eq!(
        forget_row(2).detail,
        "\"not-a-time\" is not a time at or after 1970"
    );
    assert_eq!(
        forget_row(8).detail,
        "\"-5\" is not a time at or after 1970"
    );
    assert_eq!(forget_row(5).detail, "expected 2 fields, found 1");
    // Forget rows never keep their raw text (it is a list of people to forget).
    assert!(run.rejected.iter().all(|r| r.raw.is_empty()));
    // The one valid request erased u2; u1, whose requests were all bad, remains.
    let engagement = run.table("engagement");
    assert_eq!(engagement.len(), 1);
    assert_eq!(engagement[0][0], pseudonym("u1"));
    let tombstones = std::fs::read_to_string(case.out().join("tombstones.csv")).unwrap();
    assert_eq!(tombstones, format!("pseudonym\n{}\n", pseudonym("u2")));
}

#[test]
fn events_after_a_forget_are_rejected_forgotten_with_an_empty_raw() {
    let case = Case::new();
    let events = case.write(
        "events.csv",
        format!(
            "{HEADER}\n\
             g1,u1,u1@pii.test,2024-01-01 10:00:00,view,i1,\n\
             g2,u2,u2@pii.test,2024-01-01 10:10:00,view,i1,\n\
             g3,u2,u2@pii.test,2024-01-01 10:20:00,view,i1,\n\
             g4,u1,u1@pii.test,2024-01-01 11:30:00,view,i1,\n\
             g5,u2,u2@pii.test,2024-01-01 11:40:00,view,i1,1\n\
             g6,u2,u2@pii.test,2024-01-01 12:00:00,buy,i9,2\n\
             g7,u2,u2@pii.test,2024-01-01 12:00:00,buy,i9,2\n"
        ),
    );
    let forget = case.write("forget.csv", "user,time\nu2,2024-01-01 11:00:00\n");
    let run = case.run(case.spec(&events, Some(&forget), ""));
    // u2's two earlier events were accepted, then retracted; the later three are refused (a
    // duplicate id of a forgotten user is refused as forgotten too, not counted as a duplicate).
    assert_eq!(counts(&run.summary), (7, 4, 0, 3));
    assert_eq!(run.summary.forgotten_rejected, 3);
    assert_eq!(run.summary.forget_requests, 1);
    assert_eq!(run.summary.forgotten_users, 1);
    assert_eq!(run.summary.retracted_events, 2);
    assert_eq!(run.summary.forget_audit.residual_records, 0);
    assert_eq!(run.summary.forget_audit.physical_records, 0);
    assert_eq!(
        run.reasons("events"),
        vec![(6, "forgotten"), (7, "forgotten"), (8, "forgotten")]
    );
    for line in [6, 7, 8] {
        assert_eq!(
            run.at(line).raw,
            "",
            "a forgotten user's row keeps no raw text"
        );
        assert_eq!(run.at(line).detail, "");
    }
    let u1 = pseudonym("u1");
    let u2 = pseudonym("u2");
    assert!(run.table("sessions").iter().all(|row| row[0] == u1));
    assert_eq!(run.table("engagement").len(), 1);
    let rejected_csv = std::fs::read_to_string(case.out().join("rejected.csv")).unwrap();
    assert!(!rejected_csv.contains(&u2), "{rejected_csv}");
    let tombstones = std::fs::read_to_string(case.out().join("tombstones.csv")).unwrap();
    assert_eq!(tombstones, format!("pseudonym\n{u2}\n"));
}

// ---------------------------------------------------------------------------------------------
// Duplicates, lateness, order
// ---------------------------------------------------------------------------------------------

#[test]
fn duplicates_by_id_are_dropped_and_counted() {
    let case = Case::new();
    let events = case.write(
        "events.csv",
        format!(
            "{HEADER}\n\
             d1,u1,u1@pii.test,2024-01-01 10:00:00,view,i1,\n\
             d1,u1,u1@pii.test,2024-01-01 10:00:00,view,i1,\n\
             d1,u2,u2@pii.test,2024-01-01 10:05:00,other,i2,\n\
             d2,u1,u1@pii.test,2024-01-01 10:10:00,view,i1,\n\
             ,u1,u1@pii.test,2024-01-01 10:15:00,view,i1,\n\
             ,u1,u1@pii.test,2024-01-01 10:15:00,view,i1,\n\
             d3,u1,u1@pii.test,bad time,view,i1,\n\
             d3,u1,u1@pii.test,2024-01-01 10:20:00,view,i1,\n\
             \x20d2 ,u1,u1@pii.test,2024-01-01 10:25:00,view,i1,\n"
        ),
    );
    let run = case.run(case.spec(&events, None, ""));
    // Duplicates: lines 3 and 4 (of d1) and 10 (d2, after trimming). Rows without an id are
    // never duplicates; a rejected row does not claim its id (line 9 is accepted).
    assert_eq!(counts(&run.summary), (9, 5, 3, 1));
    assert_eq!(run.reasons("events"), vec![(8, "bad_time")]);
    assert_eq!(
        run.table("sessions"),
        [vec![
            pseudonym("u1"),
            "2024-01-01T10:00:00Z".to_string(),
            "2024-01-01T10:20:00Z".to_string(),
            "5".to_string(),
        ]]
    );
}

#[test]
fn late_rows_beyond_allowed_lateness_are_rejected() {
    let case = Case::new();
    let rows = format!(
        "{HEADER}\n\
         l1,u1,u1@pii.test,2024-01-01 10:00:00,view,i1,\n\
         l2,u1,u1@pii.test,2024-01-01 12:00:00,view,i1,\n\
         l3,u1,u1@pii.test,2024-01-01 10:30:00,view,i1,\n\
         l4,u1,u1@pii.test,2024-01-01 11:00:00,view,i1,\n\
         l5,u2,u2@pii.test,2024-01-01 09:00:00,view,i1,\n\
         l6,u1,u1@pii.test,2024-01-01 11:30:00,view,i1,\n\
         l3,u1,u1@pii.test,2024-01-01 12:10:00,view,i1,\n"
    );
    let events = case.write("events.csv", &rows);
    let run = case.run(case.spec(&events, None, "allowed_lateness = \"1h\""));
    // The watermark is 12:00 from line 3 on: anything before 11:00 is late, 11:00 itself is not.
    // A late row does not claim its id either (line 8 reuses l3).
    assert_eq!(counts(&run.summary), (7, 5, 0, 2));
    assert_eq!(run.summary.late, 2);
    assert_eq!(run.reasons("events"), vec![(4, "late"), (6, "late")]);
    assert_eq!(
        run.at(4).detail,
        "time 2024-01-01T10:30:00Z is older than the watermark 2024-01-01T12:00:00Z \
         minus allowed_lateness 3600s"
    );
    let u1 = pseudonym("u1");
    assert_eq!(
        run.at(4).raw,
        format!("l3,{u1},,2024-01-01 10:30:00,view,i1,")
    );
    assert_eq!(
        run.table("sessions"),
        [
            vec![
                u1.clone(),
                "2024-01-01T10:00:00Z".to_string(),
                "2024-01-01T10:00:00Z".to_string(),
                "1".to_string(),
            ],
            vec![
                u1.clone(),
                "2024-01-01T11:00:00Z".to_string(),
                "2024-01-01T12:10:00Z".to_string(),
                "4".to_string(),
            ],
        ]
    );

    // Without allowed_lateness (0), every row older than the newest so far is late.
    let case = Case::new();
    let events = case.write("events.csv", &rows);
    let run = case.run(case.spec(&events, None, ""));
    assert_eq!(counts(&run.summary), (7, 3, 0, 4));
    assert_eq!(run.summary.late, 4);
    assert_eq!(
        run.reasons("events"),
        vec![(4, "late"), (5, "late"), (6, "late"), (7, "late")]
    );
}

#[test]
fn out_of_order_rows_within_lateness_are_accepted_and_ordered() {
    let sorted = [
        "o1,u1,u1@pii.test,2024-01-01 10:00:00,view,i1,",
        "o2,u2,u2@pii.test,2024-01-01 10:05:00,view,i1,",
        "o3,u1,u1@pii.test,2024-01-01 10:20:00,view,i1,",
        "o4,u1,u1@pii.test,2024-01-01 10:45:00,view,i1,",
        "o5,u2,u2@pii.test,2024-01-01 11:00:00,view,i1,",
        "o6,u1,u1@pii.test,2024-01-01 11:30:00,view,i1,",
        "o7,u2,u2@pii.test,2024-01-01 11:50:00,view,i1,",
    ];
    let shuffled = [
        sorted[5], sorted[2], sorted[6], sorted[0], sorted[4], sorted[3], sorted[1],
    ];
    let mut tables = Vec::new();
    for (name, rows) in [("sorted", &sorted), ("shuffled", &shuffled)] {
        let case = Case::new();
        let events = case.write(
            &format!("{name}.csv"),
            format!("{HEADER}\n{}\n", rows.join("\n")),
        );
        let run = case.run(case.spec(&events, None, "allowed_lateness = \"2h\""));
        assert_eq!(counts(&run.summary), (7, 7, 0, 0), "{name}");
        assert!(run.rejected.is_empty(), "{name}: {:?}", run.rejected);
        assert_eq!(run.summary.as_of.as_deref(), Some("2024-01-01T11:50:00Z"));
        tables.push(run.tables);
    }
    assert_eq!(tables[0], tables[1], "order of arrival must not matter");
    let sessions = &tables[1]
        .iter()
        .find(|t| t.name == "sessions")
        .unwrap()
        .rows;
    let (u1, u2) = (pseudonym("u1"), pseudonym("u2"));
    let session = |user: &str, start: &str, end: &str, n: &str| {
        vec![
            user.to_string(),
            format!("2024-01-01T{start}:00Z"),
            format!("2024-01-01T{end}:00Z"),
            n.to_string(),
        ]
    };
    let mut expected = vec![
        session(&u1, "10:00", "10:45", "3"),
        session(&u1, "11:30", "11:30", "1"),
        session(&u2, "10:05", "10:05", "1"),
        session(&u2, "11:00", "11:00", "1"),
        session(&u2, "11:50", "11:50", "1"),
    ];
    expected.sort();
    assert_eq!(sessions, &expected);
}

// ---------------------------------------------------------------------------------------------
// Personal data never leaves
// ---------------------------------------------------------------------------------------------

const RAW_IDS: [&str; 3] = ["raw-user-alice", "raw-user-bob", "raw-user-carol"];
const EMAILS: [&str; 3] = [
    "alice.pii@example.com",
    "bob.pii@example.com",
    "carol.pii@example.com",
];

/// Rows of every kind (accepted, duplicate, bad, late, forgotten) for the three users.
fn pii_csv() -> String {
    let [alice, bob, carol] = RAW_IDS;
    let [a, b, c] = EMAILS;
    format!(
        "id,user,email,time,event,item,value\n\
         p1,{alice},{a},2024-01-01 10:00:00,view,i1,\n\
         p1,{alice},{a},2024-01-01 10:00:00,view,i1,\n\
         p2,{bob},{b},2024-01-01 10:05:00,view,i1,\n\
         p3,{carol},{c},2024-01-01 10:06:00,view,i1,\n\
         p4,{alice},{a},not-a-time,view,i1,\n\
         p5,{bob},{b},2024-01-01 10:07:00,view,i1,abc\n\
         p6,{alice},{a},2024-01-01 10:08:00,,i1,\n\
         p7,{bob},{b},2024-01-01 10:09:00,view,i1,,surplus\n\
         p8,{bob},{b}\n\
         p9,{alice},{a},2024-01-01 12:00:00,view,i1,\n\
         p10,{bob},{b},2024-01-01 10:30:00,view,i1,\n\
         p11,{carol},{c},2024-01-01 12:30:00,view,i1,\n\
         p12,{alice},{a},2024-01-01 12:40:00,view,i1,\n"
    )
}

fn pii_forget(case: &Case) -> PathBuf {
    case.write(
        "forget.csv",
        format!("user,time\n{},2024-01-01 12:10:00\n", RAW_IDS[2]),
    )
}

/// Asserts that no output file, nor any in-memory table, holds an email or (unless allowed) a
/// raw user id.
fn assert_no_personal_data(case: &Case, run: &Run, raw_ids_allowed: bool) {
    let files = case.out_files();
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "engagement.csv",
            "rejected.csv",
            "sessions.csv",
            "summary.json",
            "tombstones.csv"
        ]
    );
    let tables = format!("{:?}", run.tables);
    for (name, text) in files.iter().chain([&("tables".to_string(), tables)]) {
        for email in EMAILS {
            assert!(!text.contains(email), "{name} leaks {email}:\n{text}");
        }
        // No fragment of a PII value either (e.g. after the domain was split off).
        assert!(!text.contains("pii@"), "{name}:\n{text}");
        if !raw_ids_allowed {
            for raw in RAW_IDS {
                assert!(!text.contains(raw), "{name} leaks raw id {raw}:\n{text}");
            }
        }
    }
}

#[test]
fn pii_and_raw_ids_are_never_written_from_csv() {
    let case = Case::new();
    let events = case.write("events.csv", pii_csv());
    let forget = pii_forget(&case);
    let run = case.run(case.spec(&events, Some(&forget), "allowed_lateness = \"1h\""));
    // carol's 12:30 row (line 13) is read before her 12:10 forget is released, and refused
    // when it is.
    assert_eq!(counts(&run.summary), (13, 5, 1, 7));
    assert_eq!(run.summary.late, 1);
    assert_eq!(run.summary.forgotten_users, 1);
    assert_eq!(run.summary.forgotten_rejected, 1);
    assert_eq!(
        run.reasons("events"),
        vec![
            (6, "bad_time"),
            (7, "bad_value"),
            (8, "empty_event"),
            (9, "malformed"),
            (10, "malformed"),
            (12, "late"),
            (13, "forgotten"),
        ]
    );
    // The rejected rows are there, pseudonymized, not silently dropped.
    assert_eq!(
        run.at(7).raw,
        format!(
            "p5,{},,2024-01-01 10:07:00,view,i1,abc",
            pseudonym(RAW_IDS[1])
        )
    );
    assert_eq!(run.table("engagement").len(), 2);
    assert_no_personal_data(&case, &run, false);
}

#[test]
fn pii_and_raw_ids_are_never_written_from_json_lines() {
    let case = Case::new();
    let [alice, bob, carol] = RAW_IDS;
    let [a, b, c] = EMAILS;
    let lines = [
        format!(
            r#"{{"id":"p1","user":"{alice}","email":"{a}","time":"2024-01-01 10:00:00","event":"view"}}"#
        ),
        format!(
            r#"{{"id":"p1","user":"{alice}","email":"{a}","time":"2024-01-01 10:00:00","event":"view"}}"#
        ),
        format!(
            r#"{{"id":"p2","user":"{bob}","email":"{b}","time":"2024-01-01 10:05:00","event":"view"}}"#
        ),
        format!(
            r#"{{"id":"p3","user":"{carol}","email":"{c}","time":"2024-01-01 10:06:00","event":"view"}}"#
        ),
        format!(r#"{{"id":"p4","user":"{alice}","email":"{a}","time":"later","event":"view"}}"#),
        format!(
            r#"{{"id":"p5","user":"{bob}","email":"{b}","time":"2024-01-01 10:07:00","event":"view","value":"abc"}}"#
        ),
        format!(r#"{{"id":"p6","user":"{bob}","email":"{b}","time":"2024-01-01 10:08:00"}}"#),
        format!(
            r#"{{"id":"p7","user":"{bob}","email":"{b}","time":"2024-01-01 10:09:00","event":"view""#
        ),
        format!(
            r#"{{"id":"p9","user":"{alice}","email":"{a}","time":"2024-01-01 12:00:00","event":"view"}}"#
        ),
        format!(
            r#"{{"id":"p10","user":"{bob}","email":"{b}","time":"2024-01-01 10:30:00","event":"view"}}"#
        ),
        format!(
            r#"{{"id":"p11","user":"{carol}","email":"{c}","time":"2024-01-01 12:30:00","event":"view"}}"#
        ),
    ];
    let events = case.write("events.jsonl", lines.join("\n") + "\n");
    let forget = pii_forget(&case);
    let run = case.run(case.spec(
        &events,
        Some(&forget),
        "format = \"jsonl\"\nallowed_lateness = \"1h\"",
    ));
    assert_eq!(counts(&run.summary), (11, 4, 1, 6));
    assert_eq!(
        run.reasons("events"),
        vec![
            (5, "bad_time"),
            (6, "bad_value"),
            (7, "missing_field"),
            (8, "malformed"),
            (10, "late"),
            (11, "forgotten"),
        ]
    );
    let raw: serde_json::Value = serde_json::from_str(&run.at(6).raw).unwrap();
    assert_eq!(raw["user"], pseudonym(bob).as_str());
    assert!(raw.get("email").is_none(), "{raw}");
    assert_no_personal_data(&case, &run, false);
}

#[test]
fn reveal_ids_shows_raw_ids_but_never_pii() {
    // The control for the two tests above: the same data with reveal_ids does show raw ids
    // (so their absence there is meaningful), and still no email.
    let case = Case::new();
    let events = case.write("events.csv", pii_csv());
    let forget = pii_forget(&case);
    let run = case.run_with(
        case.spec(&events, Some(&forget), "allowed_lateness = \"1h\""),
        true,
    );
    assert_eq!(counts(&run.summary), (13, 5, 1, 7));
    let sessions = std::fs::read_to_string(case.out().join("sessions.csv")).unwrap();
    assert!(sessions.contains(RAW_IDS[0]), "{sessions}");
    assert!(sessions.contains(RAW_IDS[1]), "{sessions}");
    // carol was forgotten: not even revealing shows her.
    assert!(!sessions.contains(RAW_IDS[2]), "{sessions}");
    assert_eq!(
        run.at(7).raw,
        format!("p5,{},,2024-01-01 10:07:00,view,i1,abc", RAW_IDS[1])
    );
    assert_no_personal_data(&case, &run, true);
}

// ---------------------------------------------------------------------------------------------
// Spec errors
// ---------------------------------------------------------------------------------------------

/// A minimal valid spec with `input_extra` appended to `[input]` and `tail` after it.
fn spec_with(input_extra: &str, tail: &str) -> String {
    format!(
        "tick = \"1h\"\n[input]\nevents = \"e.csv\"\nuser = \"user\"\ntime = \"time\"\n\
         event = \"event\"\nkey = \"{KEY}\"\nkey_env = \"{KEY_ENV}\"\n{input_extra}\n{tail}"
    )
}

/// Parses spec text that must fail, under a recognisable path.
fn spec_error(text: &str) -> (SpecError, String) {
    let path = Path::new("/specs/broken-spec.toml");
    match Spec::parse(text, path) {
        Ok(spec) => panic!("spec must be rejected: {spec:?}\n{text}"),
        Err(error) => {
            let message = error.to_string();
            assert!(
                message.contains("/specs/broken-spec.toml"),
                "the message must name the file: {message}"
            );
            (error, message)
        }
    }
}

#[test]
fn spec_minimal_is_valid() {
    // The baseline the error tests below start from.
    let spec = Spec::parse(&spec_with("", ""), Path::new("x.toml")).expect("valid");
    assert_eq!(spec.input.user, "user");
    assert_eq!(spec.input.max_row_bytes, 64 * 1024);
    assert_eq!(spec.input.allowed_lateness.0, 0);
    assert_eq!(spec.input.key_env, KEY_ENV);
}

#[test]
fn spec_unknown_key_names_the_key_and_the_file() {
    // Line 9 of the spec: right after the fixed [input] lines.
    let (error, message) = spec_error(&spec_with("colour = \"red\"", ""));
    assert!(matches!(error, SpecError::Parse { .. }), "{error:?}");
    assert!(message.contains("`colour`"), "{message}");
    assert!(message.contains("line 9"), "{message}");

    let (_, message) = spec_error(&format!("speed = 3\n{}", spec_with("", "")));
    assert!(message.contains("`speed`"), "{message}");
    assert!(message.contains("line 1, column 1"), "{message}");

    let (_, message) = spec_error(&spec_with(
        "",
        "[sessions]\ngap = \"30m\"\nwindow = \"1h\"\n",
    ));
    assert!(message.contains("`window`"), "{message}");
    assert!(message.contains("line 12"), "{message}");

    let (_, message) = spec_error(&spec_with("", "[funnels]\nsteps = []\n"));
    assert!(message.contains("`funnels`"), "{message}");

    // Spec::load names the file it read.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    std::fs::write(&path, spec_with("delimeter = \";\"", "")).unwrap();
    let error = Spec::load(&path).expect_err("unknown key");
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("`delimeter`"), "{message}");
}

#[test]
fn spec_wrong_type_names_line_and_column() {
    let text = spec_with("max_row_bytes = \"big\"", "");
    let (error, message) = spec_error(&text);
    assert!(matches!(error, SpecError::Parse { .. }), "{error:?}");
    // `max_row_bytes = "big"` is line 9; the value starts at column 17.
    assert!(message.contains("line 9, column 17"), "{message}");
    assert!(message.contains("max_row_bytes"), "{message}");
    assert!(message.contains("invalid type"), "{message}");

    let (_, message) = spec_error(&spec_with("pii = \"email\"", ""));
    assert!(message.contains("line 9, column 7"), "{message}");
    assert!(message.contains("pii"), "{message}");

    let (_, message) = spec_error(&spec_with("", "").replace("tick = \"1h\"", "tick = true"));
    assert!(message.contains("line 1, column 8"), "{message}");
    assert!(message.contains("invalid type: boolean"), "{message}");

    // More values the schema refuses: line and column, and the value. (These messages do not
    // name the key: see `spec_value_errors_name_the_key`.)
    let (_, message) = spec_error(&format!("k_anonymity = -1\n{}", spec_with("", "")));
    assert!(message.contains("line 1, column 15"), "{message}");
    assert!(message.contains("`-1`"), "{message}");

    let (_, message) = spec_error(&spec_with("format = \"parquet\"", ""));
    assert!(message.contains("line 9, column 10"), "{message}");
    assert!(message.contains("`parquet`"), "{message}");

    // A missing required key.
    let text = "[input]\nevents = \"e.csv\"\ntime = \"t\"\nevent = \"e\"\n";
    let (_, message) = spec_error(text);
    assert!(message.contains("missing field `user`"), "{message}");
}

#[test]
fn spec_bad_duration_is_rejected() {
    let (error, message) = spec_error(&spec_with("allowed_lateness = \"3x\"", ""));
    assert!(matches!(error, SpecError::Parse { .. }), "{error:?}");
    assert!(message.contains("invalid duration \"3x\""), "{message}");
    assert!(message.contains("allowed_lateness"), "{message}");
    assert!(message.contains("line 9, column 20"), "{message}");

    let (_, message) = spec_error(&spec_with("", "[sessions]\ngap = \"30 minutes\"\n"));
    assert!(
        message.contains("invalid duration \"30 minutes\""),
        "{message}"
    );
    assert!(message.contains("line 11"), "{message}");

    let (_, message) = spec_error(&spec_with("", "").replace("tick = \"1h\"", "tick = \"1y\""));
    assert!(message.contains("invalid duration \"1y\""), "{message}");
    assert!(message.contains("line 1"), "{message}");

    let (_, message) = spec_error(&spec_with("allowed_lateness = -5", ""));
    assert!(message.contains("negative duration -5"), "{message}");

    // Well-typed but unusable durations.
    let (error, _) = spec_error(&spec_with("", "[sessions]\ngap = \"0s\"\n"));
    match error {
        SpecError::Invalid { key, .. } => assert_eq!(key, "sessions.gap"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    let (error, _) = spec_error(&spec_with("", "").replace("tick = \"1h\"", "tick = 0"));
    match error {
        SpecError::Invalid { key, .. } => assert_eq!(key, "tick"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    let (_, message) = spec_error(&spec_with("", "[engagement]\nutc_offset = \"+25:00\"\n"));
    assert!(
        message.contains("invalid UTC offset \"+25:00\""),
        "{message}"
    );
}

#[test]
fn spec_delimiter_must_be_one_ascii_character() {
    for bad in [",,", "", "é", "\\t\\t"] {
        let (error, message) = spec_error(&spec_with(&format!("delimiter = \"{bad}\""), ""));
        match &error {
            SpecError::Invalid { key, message, .. } => {
                assert_eq!(key, "input.delimiter");
                assert!(
                    message.starts_with("expected one ASCII character"),
                    "{message}"
                );
            }
            other => panic!("expected Invalid for {bad:?}, got {other:?}"),
        }
        assert!(message.contains("`input.delimiter`"), "{message}");
    }
    // Tab and semicolon are fine.
    for good in ["\\t", ";"] {
        let text = spec_with(&format!("delimiter = \"{good}\""), "");
        Spec::parse(&text, Path::new("ok.toml")).expect("one-character delimiter");
    }
    let (error, _) = spec_error(&spec_with("max_row_bytes = 0", ""));
    match error {
        SpecError::Invalid { key, .. } => assert_eq!(key, "input.max_row_bytes"),
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn spec_column_both_mapped_and_pii_is_rejected() {
    let (error, message) = spec_error(&spec_with("pii = [\"email\", \"user\"]", ""));
    match &error {
        SpecError::Invalid { key, message, .. } => {
            assert_eq!(key, "input.pii");
            assert!(message.contains("\"user\""), "{message}");
            assert!(message.contains("`input.user`"), "{message}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(message.contains("cannot also be PII"), "{message}");

    // A property column is mapped too.
    let (error, _) = spec_error(&spec_with(
        "properties = [\"email\"]\npii = [\"email\"]",
        "",
    ));
    match error {
        SpecError::Invalid { key, message, .. } => {
            assert_eq!(key, "input.pii");
            assert!(message.contains("`input.properties`"), "{message}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }

    // And one column cannot be mapped twice.
    let (error, _) = spec_error(&spec_with("item = \"event\"", ""));
    match error {
        SpecError::Invalid { key, message, .. } => {
            assert_eq!(key, "input.item");
            assert!(message.contains("`input.event`"), "{message}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn spec_load_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.toml");
    match Spec::load(&missing) {
        Err(SpecError::Read { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        Err(other) => panic!("expected SpecError::Read, got {other:?}"),
        Ok(_) => panic!("a missing spec must fail"),
    }
    let path = dir.path().join("not-toml.toml");
    std::fs::write(&path, "[input\nevents = 1\n").unwrap();
    let message = Spec::load(&path).expect_err("not TOML").to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("line 1"), "{message}");
    // A good spec is named after its file.
    let path = dir.path().join("good-name.toml");
    std::fs::write(&path, spec_with("", "")).unwrap();
    assert_eq!(Spec::load(&path).expect("valid").name(), "good-name");
}

#[test]
fn csv_header_with_a_byte_order_mark_is_read() {
    let case = Case::new();
    let events = case.write(
        "events.csv",
        format!("\u{feff}{HEADER}\ne1,u1,u1@pii.test,2024-01-01 10:00:00,view,i1,\n"),
    );
    let run = case.run(case.spec(&events, None, ""));
    // The first column is `id`: read as such, not as "\u{feff}id".
    assert_eq!(counts(&run.summary), (1, 1, 0, 0));
    assert_eq!(run.table("sessions")[0][0], pseudonym("u1"));
}

// ---------------------------------------------------------------------------------------------
// Known defects in src/ (ignored until fixed; run with `cargo test --test bad_input -- --ignored`)
// ---------------------------------------------------------------------------------------------

#[test]
fn spec_value_errors_name_the_key() {
    let cases = [
        (
            spec_with("", "").replace("tick = \"1h\"", "tick = true"),
            "tick",
        ),
        (
            format!("k_anonymity = -1\n{}", spec_with("", "")),
            "k_anonymity",
        ),
        (spec_with("format = \"parquet\"", ""), "format"),
        (spec_with("max_row_bytes = 1.5", ""), "max_row_bytes"),
        (
            spec_with("", "").replace("user = \"user\"", "user = 5"),
            "user",
        ),
    ];
    for (text, key) in cases {
        let (_, message) = spec_error(&text);
        assert!(message.contains(&format!("`{key}`")), "{message}");
    }
}

#[test]
fn malformed_csv_rows_never_leak_shifted_pii() {
    let case = Case::new();
    // A stray comma before `email` shifts the email into the `time` position, which the
    // positional redaction leaves alone; two stray fields shift the raw user id past `email`.
    let events = case.write(
        "events.csv",
        format!(
            "{HEADER}\n\
             m1,{alice},stray,{a},2024-01-01 10:00:00,view,i1,\n\
             m2,x,y,{alice},2024-01-01 10:00:00,view,i1,\n",
            alice = RAW_IDS[0],
            a = EMAILS[0],
        ),
    );
    let run = case.run(case.spec(&events, None, ""));
    assert_eq!(counts(&run.summary), (2, 0, 0, 2));
    assert_eq!(
        run.reasons("events"),
        vec![(2, "malformed"), (3, "malformed")]
    );
    assert_no_personal_data(&case, &run, false);
}

#[test]
fn rejected_rows_of_forgotten_users_keep_no_raw_text() {
    let case = Case::new();
    let [alice, bob, _] = RAW_IDS;
    let events = case.write(
        "events.csv",
        format!(
            "{HEADER}\n\
             r1,{alice},a@x.test,2024-01-01 10:00:00,view,i1,\n\
             r2,{bob},b@x.test,2024-01-01 10:01:00,view,i1,\n\
             r3,{bob},b@x.test,not-a-time,view,secret-item,\n\
             r4,{alice},a@x.test,2024-01-01 12:00:00,view,i1,\n\
             r5,{bob},b@x.test,2024-01-01 12:01:00,view,secret-item,abc\n"
        ),
    );
    let forget = case.write(
        "forget.csv",
        format!("user,time\n{bob},2024-01-01 11:00:00\n"),
    );
    // bob's bad rows (lines 4 and 6, one before and one after his forget) stay in rejected.csv
    // with his pseudonym, his other columns, and with reveal_ids his raw id.
    for reveal in [false, true] {
        let run = case.run_with(case.spec(&events, Some(&forget), ""), reveal);
        assert_eq!(counts(&run.summary), (5, 3, 0, 2));
        assert_eq!(
            run.reasons("events"),
            vec![(4, "bad_time"), (6, "bad_value")]
        );
        let rejected = std::fs::read_to_string(case.out().join("rejected.csv")).unwrap();
        assert!(!rejected.contains(bob), "reveal={reveal}: {rejected}");
        assert!(
            !rejected.contains(&pseudonym(bob)),
            "reveal={reveal}: {rejected}"
        );
        assert!(
            !rejected.contains("secret-item"),
            "reveal={reveal}: {rejected}"
        );
    }
}

#[test]
fn over_long_csv_rows_count_every_byte_of_the_row() {
    let case = Case::new();
    // 7 fields of 6 bytes: 42 bytes of fields, 48 bytes of row (6 commas), 56 quoted.
    let events = case.write(
        "events.csv",
        format!(
            "{HEADER}\n\
             \"idid01\",\"user01\",\"mail01\",\"100000\",\"view01\",\"item01\",\"000001\"\n"
        ),
    );
    let run = case.run(case.spec(&events, None, "max_row_bytes = 45"));
    assert_eq!(run.reasons("events"), vec![(2, "too_long")]);
}
