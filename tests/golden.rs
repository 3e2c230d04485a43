//! The shipped fixtures (learning, shop) produce their hand-checked expected outputs, through the
//! real binary.

mod common;

use std::path::Path;

fn run_cli(args: &[&str]) -> std::process::Output {
    common::behave_command(args).output().unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A shipped spec and what its replay must produce: every listed file byte for byte against
/// `fixtures/<name>/expected/`, and the summary's counts.
struct Golden<'a> {
    spec: &'a str,
    expected_dir: &'a str,
    files: &'a [&'a str],
    counts: &'a [(&'a str, u64)],
    as_of: &'a str,
    summary_line: &'a str,
}

fn check_golden(golden: &Golden) {
    let out = common::temp_dir();
    let out_dir = out.path().to_str().unwrap();
    let result = run_cli(&["replay", golden.spec, "--out", out_dir, "--reveal-ids"]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let expected = Path::new(env!("CARGO_MANIFEST_DIR")).join(golden.expected_dir);
    for file in golden.files {
        assert_eq!(
            read(&out.path().join(file)),
            read(&expected.join(file)),
            "{}: {file}",
            golden.spec
        );
    }
    let summary: serde_json::Value =
        serde_json::from_str(&read(&out.path().join("summary.json"))).unwrap();
    for (key, value) in golden.counts {
        assert_eq!(summary[key], *value, "{}: {key}", golden.spec);
    }
    assert_eq!(summary["as_of"], golden.as_of, "{}", golden.spec);
    assert_eq!(summary["forget_audit"]["residual_records"], 0);
    assert_eq!(summary["forget_audit"]["physical_records"], 0);
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(stdout.contains(golden.summary_line), "{stdout}");
}

#[test]
fn learning_fixture_matches_expected_outputs() {
    check_golden(&Golden {
        spec: "dataflows/learning.toml",
        expected_dir: "fixtures/learning/expected",
        files: &common::LEARNING_FILES,
        counts: &[
            ("read", 59),
            ("accepted", 51),
            ("duplicates", 1),
            ("rejected", 7),
            ("late", 1),
            ("forgotten_rejected", 1),
            ("forget_requests", 2),
            ("forgotten_users", 1),
            ("retracted_events", 3),
            ("forget_unknown", 1),
        ],
        as_of: "2024-03-01T10:00:00Z",
        summary_line: "59 = 51 accepted + 1 duplicates + 7 rejected",
    });
}

#[test]
fn shop_fixture_matches_expected_outputs() {
    check_golden(&Golden {
        spec: "dataflows/shop.toml",
        expected_dir: "fixtures/shop/expected",
        files: &[
            "sessions.csv",
            "engagement.csv",
            "segments.csv",
            "segment_sizes.csv",
            "retention_daily.csv",
            "retention_weekly.csv",
            "rejected.csv",
        ],
        counts: &[
            ("read", 83),
            ("accepted", 79),
            ("duplicates", 1),
            ("rejected", 3),
            ("late", 1),
            ("forgotten_rejected", 1),
            ("forget_requests", 1),
            ("forgotten_users", 1),
            ("retracted_events", 7),
            ("forget_unknown", 0),
        ],
        as_of: "2024-05-02T12:00:00Z",
        summary_line: "83 = 79 accepted + 1 duplicates + 3 rejected",
    });
}

#[test]
fn pseudonymized_output_holds_no_raw_ids_or_pii() {
    let out = common::temp_dir();
    let out_dir = out.path().to_str().unwrap();
    let result = run_cli(&["replay", "dataflows/learning.toml", "--out", out_dir]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let sessions = read(&out.path().join("sessions.csv"));
    assert_eq!(sessions.lines().count(), 33, "{sessions}");
    for entry in std::fs::read_dir(out.path()).unwrap() {
        let text = read(&entry.unwrap().path());
        for secret in [
            "alice",
            "bob",
            "carol",
            "dave",
            "erin",
            "frank",
            "grace",
            "zoe",
            "@example.com",
        ] {
            assert!(
                !text.contains(secret),
                "{secret} leaked into output:\n{text}"
            );
        }
    }
    // Pseudonyms are 16 hex digits, and the same user keeps the same pseudonym across views.
    let first = sessions
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(first.len(), 16);
    assert!(first.chars().all(|c| c.is_ascii_hexdigit()));
    assert!(read(&out.path().join("engagement.csv")).contains(&first));
}

#[test]
fn another_key_gives_other_pseudonyms() {
    let a = common::temp_dir();
    let b = common::temp_dir();
    let run_with = |dir: &Path, key: Option<&str>| {
        let mut command = common::behave_command(&[
            "replay",
            "dataflows/learning.toml",
            "--out",
            dir.to_str().unwrap(),
        ]);
        if let Some(key) = key {
            command.env("BEHAVE_KEY", key);
        }
        assert!(command.output().unwrap().status.success());
        read(&dir.join("sessions.csv"))
    };
    let with_spec_key = run_with(a.path(), None);
    let with_env_key = run_with(b.path(), Some("another secret"));
    assert_ne!(with_spec_key, with_env_key);
    assert_eq!(with_spec_key.lines().count(), with_env_key.lines().count());
}

/// Replays `spec` revealing ids, with a change log; returns the out dir and the log's path.
fn replay_with_changes(spec: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let out = common::temp_dir();
    let changes = out.path().join("changes.jsonl");
    let result = run_cli(&[
        "replay",
        spec,
        "--reveal-ids",
        "--out",
        out.path().to_str().unwrap(),
        "--changes",
        changes.to_str().unwrap(),
    ]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    (out, changes)
}

#[test]
fn change_log_replays_to_the_snapshot_and_shows_time_driven_exits() {
    let (out, changes) = replay_with_changes("dataflows/learning.toml");
    let records: Vec<serde_json::Value> = read(&changes)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    // In time order.
    let times: Vec<&str> = records
        .iter()
        .map(|r| r["time"].as_str().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]));
    // Summing the diffs of segment rows gives back segments.csv.
    let mut net: std::collections::BTreeMap<(String, String), i64> = Default::default();
    for r in records.iter().filter(|r| r["view"] == "segments") {
        let key = (
            r["row"]["segment"].as_str().unwrap().to_string(),
            r["row"]["user"].as_str().unwrap().to_string(),
        );
        *net.entry(key).or_default() += r["diff"].as_i64().unwrap();
    }
    let from_log: Vec<String> = net
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .map(|((s, u), n)| {
            assert_eq!(n, 1);
            format!("{s},{u}")
        })
        .collect();
    let csv = read(&out.path().join("segments.csv"));
    assert_eq!(from_log, csv.lines().skip(1).collect::<Vec<_>>());
    // Grace's last event is 2024-02-14 12:00; she turns dormant exactly two weeks later, with
    // no event of hers at that time.
    assert!(records.iter().any(|r| r["row"]
        == serde_json::json!({"segment": "dormant_14d", "user": "grace"})
        && r["time"] == "2024-02-28T12:00:00Z"
        && r["diff"] == 1));
    // The forgotten user (dave) appears nowhere in the log, not even by pseudonym.
    let tombstones = read(&out.path().join("tombstones.csv"));
    for pseudonym in tombstones.lines().skip(1) {
        assert!(!read(&changes).contains(pseudonym));
    }
    assert!(!read(&changes).contains("dave"));
}

#[test]
fn shop_purchase_leaving_the_window_makes_an_abandoner_again() {
    let (_out, changes) = replay_with_changes("dataflows/shop.toml");
    let chloe: Vec<(String, i64)> = read(&changes)
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|r| {
            r["row"] == serde_json::json!({"segment": "cart_abandoners_7d", "user": "chloe"})
        })
        .map(|r| {
            (
                r["time"].as_str().unwrap().to_string(),
                r["diff"].as_i64().unwrap(),
            )
        })
        .collect();
    // Chloe adds boots to her cart on 2024-04-24, buys them on 04-25 09:00 and adds a mug on
    // 04-26: she is an abandoner again when the purchase leaves the 7-day window, at 05-02 09:00,
    // with no event of hers at that time.
    assert_eq!(
        chloe[chloe.len() - 3..],
        [
            ("2024-04-24T10:00:00Z".to_string(), 1),
            ("2024-04-25T09:00:00Z".to_string(), -1),
            ("2024-05-02T09:00:00Z".to_string(), 1),
        ]
    );
}
