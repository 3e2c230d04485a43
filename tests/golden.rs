//! The shipped fixture produces its hand-checked expected outputs, through the real binary.

mod common;

use std::path::Path;
use std::process::Command;

fn run_cli(args: &[&str]) -> std::process::Output {
    Command::new(common::behave_bin())
        .args(args)
        .env_remove("BEHAVE_KEY")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn learning_fixture_matches_expected_outputs() {
    let out = common::temp_dir();
    let out_dir = out.path().to_str().unwrap();
    let result = run_cli(&[
        "replay",
        "dataflows/learning.toml",
        "--out",
        out_dir,
        "--reveal-ids",
    ]);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let expected = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/learning/expected");
    for file in [
        "sessions.csv",
        "engagement.csv",
        "segments.csv",
        "segment_sizes.csv",
        "retention_weekly_quiz.csv",
        "retention_daily_ist.csv",
        "rejected.csv",
    ] {
        assert_eq!(
            read(&out.path().join(file)),
            read(&expected.join(file)),
            "{file}"
        );
    }
    let summary: serde_json::Value =
        serde_json::from_str(&read(&out.path().join("summary.json"))).unwrap();
    for (key, value) in [
        ("read", 23),
        ("accepted", 15),
        ("duplicates", 1),
        ("rejected", 7),
        ("late", 1),
        ("forget_requests", 2),
        ("forgotten_users", 1),
        ("retracted_events", 3),
        ("forget_unknown", 1),
    ] {
        assert_eq!(summary[key], value, "{key}");
    }
    assert_eq!(summary["as_of"], "2024-01-10T10:30:00Z");
    assert_eq!(summary["forget_audit"]["residual_records"], 0);
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        stdout.contains("23 = 15 accepted + 1 duplicates + 7 rejected"),
        "{stdout}"
    );
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
    assert_eq!(sessions.lines().count(), 9, "{sessions}");
    for entry in std::fs::read_dir(out.path()).unwrap() {
        let text = read(&entry.unwrap().path());
        for secret in ["alice", "bob", "carol", "dave", "zoe", "@example.com"] {
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
        let mut command = Command::new(common::behave_bin());
        command
            .args([
                "replay",
                "dataflows/learning.toml",
                "--out",
                dir.to_str().unwrap(),
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("BEHAVE_KEY");
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
