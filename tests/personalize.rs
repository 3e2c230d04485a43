//! The films fixture (similarity, item similarity, recommendations) through the real binary and
//! the replay: hand-checked outputs, worker independence, erasure-equivalence of a forget at the
//! spec level, the change log, and spec mistakes named.

mod common;

use behave::spec::Spec;
use std::path::Path;

const FILES: [&str; 4] = [
    "similarity.csv",
    "item_similarity.csv",
    "recommendations.csv",
    "rejected.csv",
];

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn replay_cli(extra: &[&str]) -> tempfile::TempDir {
    let out = common::temp_dir();
    let mut args = vec![
        "replay",
        "dataflows/films.toml",
        "--reveal-ids",
        "--out",
        out.path().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let result = common::behave_command(&args).output().unwrap();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

#[test]
fn films_fixture_matches_expected_outputs_on_1_and_3_workers() {
    let expected = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/films/expected");
    for workers in ["1", "3"] {
        let out = replay_cli(&["-w", workers]);
        for file in FILES {
            assert_eq!(
                read(&out.path().join(file)),
                read(&expected.join(file)),
                "{file} with {workers} workers"
            );
        }
        let summary: serde_json::Value =
            serde_json::from_str(&read(&out.path().join("summary.json"))).unwrap();
        assert_eq!(summary["forgotten_users"], 1);
        assert_eq!(summary["forget_audit"]["residual_records"], 0);
    }
    // Hand-checked (fixtures/films/README.md): ana and ben share alien and brazil of their three
    // films each: 2/3; ana's top recommendation is fargo, 1/sqrt(6) from dee plus half of the
    // genre cosine 1/4. Fay (forgotten) appears nowhere; gus (opted out) and hal (no rating)
    // get the most popular films they have not rated.
    let similarity = read(&expected.join("similarity.csv"));
    assert!(similarity.contains("ana,ben,0.666667\n"));
    assert!(!similarity.contains("fay") && !similarity.contains("gus"));
    let recommendations = read(&expected.join("recommendations.csv"));
    assert!(recommendations.contains("ana,1,fargo,0.533248\n"));
    assert!(recommendations.contains("hal,1,alien,4.000000\n"));
    assert!(!recommendations.contains("fay"));
    // Ana dismissed dune, which her neighbours ben and cai rated well.
    assert!(!recommendations
        .lines()
        .any(|l| l.starts_with("ana,") && l.contains(",dune,")));
}

#[test]
fn forgetting_fay_equals_a_stream_without_her() {
    let dir = common::temp_dir();
    let events = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/films/events.csv"));
    let without: String = events
        .lines()
        .filter(|line| !line.contains(",fay,"))
        .map(|line| format!("{line}\n"))
        .collect();
    let path = dir.path().join("events.csv");
    std::fs::write(&path, without).unwrap();
    let empty = dir.path().join("forget.csv");
    std::fs::write(&empty, "user,time\n").unwrap();
    let forgot = replay_cli(&[]);
    let never = replay_cli(&[
        "--events",
        path.to_str().unwrap(),
        "--forget",
        empty.to_str().unwrap(),
    ]);
    for file in [
        "similarity.csv",
        "item_similarity.csv",
        "recommendations.csv",
    ] {
        assert_eq!(
            read(&forgot.path().join(file)),
            read(&never.path().join(file)),
            "{file}"
        );
    }
}

#[test]
fn change_log_covers_personalization_and_never_names_the_forgotten() {
    let out = common::temp_dir();
    let changes = out.path().join("changes.jsonl");
    let _ = common::behave_command(&[
        "replay",
        "dataflows/films.toml",
        "--reveal-ids",
        "--out",
        out.path().to_str().unwrap(),
        "--changes",
        changes.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    let log = read(&changes);
    assert!(!log.contains("fay"));
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Summing the diffs of recommendation rows gives back recommendations.csv.
    let mut net: std::collections::BTreeMap<String, i64> = Default::default();
    for r in records.iter().filter(|r| r["view"] == "recommendations") {
        let row = &r["row"];
        let key = format!(
            "{},{},{},{}",
            row["user"].as_str().unwrap(),
            row["rank"],
            row["item"].as_str().unwrap(),
            row["score"].as_str().unwrap()
        );
        *net.entry(key).or_default() += r["diff"].as_i64().unwrap();
    }
    let mut from_log: Vec<String> = net
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .map(|(k, _)| k)
        .collect();
    let csv = read(&out.path().join("recommendations.csv"));
    let mut from_csv: Vec<String> = csv.lines().skip(1).map(str::to_string).collect();
    from_log.sort();
    from_csv.sort();
    assert_eq!(from_log, from_csv);
    assert!(records.iter().any(|r| r["view"] == "similarity"));
    assert!(records.iter().any(|r| r["view"] == "item_similarity"));
}

fn spec_error(extra: &str) -> String {
    let text = format!(
        "[input]\nevents = \"x.csv\"\nuser = \"u\"\ntime = \"t\"\nevent = \"e\"\nitem = \"i\"\n{extra}"
    );
    Spec::parse(&text, Path::new("s.toml"))
        .unwrap_err()
        .to_string()
}

#[test]
fn personalization_spec_mistakes_are_named() {
    let e = spec_error("event_type = \"rate\"\n");
    assert!(
        e.contains("input.event_type") && e.contains("not both"),
        "{e}"
    );
    let ok = Spec::parse(
        "[input]\nevents = \"x.csv\"\nuser = \"u\"\ntime = \"t\"\nevent_type = \"rate\"\n",
        Path::new("s.toml"),
    )
    .unwrap();
    assert_eq!(ok.input.event_type.as_deref(), Some("rate"));
    let e = spec_error("[similarity]\nevents = [\"rate\"]\ncolour = 1\n");
    assert!(e.contains("colour") && e.contains("s.toml"), "{e}");
    let e = spec_error("[recommendations]\nn = 3\n");
    assert!(
        e.contains("recommendations") && e.contains("[similarity]"),
        "{e}"
    );
    let e = spec_error("[similarity]\nevents = []\n");
    assert!(e.contains("similarity.events"), "{e}");
    let e = spec_error("[similarity]\nevents = [\"rate\"]\nmin_value = 4\n");
    assert!(
        e.contains("similarity.min_value") && e.contains("input.value"),
        "{e}"
    );
    let e = spec_error("[similarity]\nevents = [\"rate\"]\nopt_in_event = \"in\"\n");
    assert!(e.contains("similarity.opt_in_event"), "{e}");
    let e = spec_error("[similarity]\nevents = [\"rate\"]\nk = 0\n");
    assert!(e.contains("similarity.k"), "{e}");
    let e = spec_error("[similarity]\nevents = [\"rate\"]\n[item_similarity]\nmax_users = 3\n");
    assert!(e.contains("max_users"), "{e}");
    let e =
        spec_error("[similarity]\nevents = [\"rate\"]\n[recommendations]\ncontent_weight = 0.5\n");
    assert!(
        e.contains("recommendations.content_weight") && e.contains("catalog"),
        "{e}"
    );
    let e = spec_error(
        "[similarity]\nevents = [\"rate\"]\n[recommendations]\ncatalog = \"/nonexistent/c.csv\"\n",
    );
    assert!(
        e.contains("recommendations.catalog") && e.contains("/nonexistent/c.csv"),
        "{e}"
    );
    let dir = common::temp_dir();
    let bad = dir.path().join("c.csv");
    std::fs::write(&bad, "film,genres\na,b\n").unwrap();
    let e = spec_error(&format!(
        "[similarity]\nevents = [\"rate\"]\n[recommendations]\ncatalog = {:?}\n",
        bad.display().to_string()
    ));
    assert!(e.contains("item,tags"), "{e}");
}

#[test]
fn evaluate_prints_metrics_of_both_models_as_json() {
    let evaluate = || {
        common::behave_command(&[
            "evaluate",
            "dataflows/films.toml",
            "--split",
            "random",
            "--ratio",
            "0.5",
            "--seed",
            "3",
            "--json",
        ])
        .output()
        .unwrap()
    };
    let result = evaluate();
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    for model in ["user_cf", "popularity"] {
        for metric in ["map@10", "ndcg@10", "precision@10", "recall@10"] {
            let value = json[model][metric].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&value), "{model} {metric} {value}");
        }
    }
    // Deterministic for a seed.
    let again = evaluate();
    assert_eq!(result.stdout, again.stdout);
    let bad = common::behave_command(&["evaluate", "dataflows/learning.toml"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("[similarity]"));
}

#[test]
fn rating_files_without_an_event_column_use_event_type() {
    // Tab-separated, out of time order, as MovieLens is.
    let dir = common::temp_dir();
    let events = dir.path().join("ratings.tsv");
    std::fs::write(
        &events,
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n\
         1\ta\t5\t200\n2\ta\t4\t100\n1\tb\t2\t300\n2\tb\t5\t400\n3\ta\t1\t50\n",
    )
    .unwrap();
    let text = format!(
        "[input]\nevents = {:?}\ndelimiter = \"\\t\"\nuser = \"user_id:token\"\n\
         item = \"item_id:token\"\nvalue = \"rating:float\"\ntime = \"timestamp:float\"\n\
         event_type = \"rate\"\nallowed_lateness = \"1d\"\nkey = \"k\"\n\
         key_env = \"BEHAVE_TEST_UNSET_KEY_VARIABLE\"\n\
         [similarity]\nevents = [\"rate\"]\nmin_value = 4\n[recommendations]\nn = 2\n",
        events.display().to_string()
    );
    let spec = Spec::parse(&text, Path::new("ratings.toml")).unwrap();
    let outcome = common::run(spec, 1, None);
    assert_eq!(outcome.summary.accepted, 5);
    // 1 likes {a}, 2 likes {a, b}: cosine 1/sqrt(2); 3 only rated a 1 star: cold, gets the
    // popular films it has not liked (a: 2 users, b: 1).
    let similarity = common::table(&outcome, "similarity");
    assert_eq!(
        similarity,
        vec![
            vec!["1".to_string(), "2".into(), "0.707107".into()],
            vec!["2".to_string(), "1".into(), "0.707107".into()]
        ]
    );
    let recommendations = common::table(&outcome, "recommendations");
    assert!(recommendations.contains(&vec![
        "1".to_string(),
        "1".into(),
        "b".into(),
        "0.707107".into()
    ]));
    assert!(recommendations.contains(&vec![
        "3".to_string(),
        "1".into(),
        "a".into(),
        "2.000000".into()
    ]));
}
