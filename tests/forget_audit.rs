//! After a forget request, no arrangement holds a record of the forgotten user: the runtime
//! scans every trace once compaction has passed the forget. The scan itself is checked to find
//! the records of a user who was not forgotten.

use behave::event::Sym;
use behave::event::{Event, UserId};
use behave::ingest::Epoch;
use behave::runtime::{Audit, Cluster, Row, Runner, ViewConfig};
use behave::views::recommend::RecommendParams;
use behave::views::retention::{Period, RetentionSpec};
use behave::views::segments::{Dormant, Metric, Percentile, Segment};
use behave::views::similarity::{Interactions, SimilarityParams};

fn views() -> ViewConfig {
    let mut config = ViewConfig::sessions_and_engagement(1_800);
    // Everyone is dormant at the end (no event within the last hour): a segment per user.
    config.segments.push(Segment::Dormant(Dormant {
        name: "asleep".into(),
        within: 3_600,
    }));
    // Everyone is at or above the 1st percentile of event counts over a day: the percentile
    // operators hold every user.
    config.segments.push(Segment::Percentile(Percentile {
        name: "everyone".into(),
        percentile: 1,
        within: 86_400,
        event: None,
        metric: Metric::Count,
    }));
    // Every user is in the daily cohort of their first event: the retention fold holds everyone.
    config.retention.push((
        "daily".into(),
        RetentionSpec {
            period: Period::Day,
            utc_offset: 0,
            start_event: None,
            return_event: None,
            unbounded: false,
        },
    ));
    // Everyone views the same films: everyone is everyone's neighbour.
    config.similarity = Some(SimilarityParams {
        interactions: Interactions {
            events: vec![Sym::of("view")],
            min_value: None,
        },
        k: 10,
        max_item_users: 500,
        consent: None,
    });
    config.similarity_table = true;
    config.recommendations = Some(RecommendParams {
        n: 3,
        dismiss: None,
        popular_within: None,
        catalog: None,
        content_weight: 0,
    });
    config
}

fn epoch(time: u64, peers: usize, updates: Vec<(Event, isize)>) -> Epoch {
    let mut shards = vec![Vec::new(); peers];
    for (event, diff) in updates {
        shards[(event.user.0 % peers as u64) as usize].push((event, diff));
    }
    Epoch { time, shards }
}

fn history(user: u64) -> Vec<Event> {
    (0..20)
        .map(|i| {
            // Users share films 0..3; each also has films of their own.
            let film = if i % 2 == 0 {
                i % 3
            } else {
                100 * user as i64 + i
            };
            Event::new(UserId(user), 1_000 + i * 700, "view").with_item(&format!("film-{film}"))
        })
        .collect()
}

/// The histories of users 1 to 5, at time 20,000.
fn everyone(workers: usize) -> Epoch {
    let load = (1..=5)
        .flat_map(|user| history(user).into_iter().map(|e| (e, 1)))
        .collect();
    epoch(20_000, workers, load)
}

fn run(workers: usize, forget: &[u64], audit_for: Vec<UserId>) -> Audit {
    let runner = Runner::start(Cluster::local(workers), views()).unwrap();
    runner.sync(everyone(workers)).unwrap();
    let retractions = forget
        .iter()
        .flat_map(|&u| history(u).into_iter().map(|e| (e, -1)))
        .collect();
    runner.sync(epoch(30_000, workers, retractions)).unwrap();
    let finished = runner.finish(30_000, audit_for).unwrap();
    // Segment memberships, similarity and recommendations (arrangements), and the in-place
    // state of the user histories (sessions, engagement), of the segment fold and percentile
    // operators, of the retention fold, of the similarity operators and of the recommendation
    // ranking, on every worker.
    assert_eq!(finished.audit.traces, 8 * workers);
    // The views no longer mention forgotten users, and still mention the others.
    let snapshot = finished.snapshot.unwrap();
    let mentioned = |user: u64| {
        snapshot
            .keys()
            .any(|row: &Row| row.users().iter().flatten().any(|u| u.0 == user))
    };
    for user in 1..=5 {
        assert_eq!(mentioned(user), !forget.contains(&user), "user {user}");
    }
    finished.audit
}

#[test]
fn forgotten_users_leave_no_record_in_any_arrangement() {
    for workers in [1, 3] {
        let audit = run(workers, &[2, 4], vec![UserId(2), UserId(4)]);
        // Neither data nor cancelled updates: the bytes are gone, not only the values.
        assert_eq!(audit.residual_records, 0, "{workers} workers");
        assert_eq!(audit.physical_records, 0, "{workers} workers");
    }
}

#[test]
fn the_audit_finds_records_that_are_there() {
    // User 3 was never forgotten: their history (sessions, engagement), their segment fold
    // state with its 20 owed exits from the day window, 2 memberships (dormant, percentile),
    // their entry in the percentile operators, their retention state, and their neighbours and
    // recommendations are all found, each one physical update after compaction.
    let audit = run(1, &[2], vec![UserId(3)]);
    assert!(audit.residual_records >= 25, "{audit:?}");
    assert_eq!(audit.physical_records, audit.residual_records, "{audit:?}");
}

/// Polls `runner.residue` for `user` until nothing physical is left, for at most 20 s.
fn physical_left(runner: &Runner, user: UserId) -> behave::runtime::Residue {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut residue = runner.residue(&[user]).unwrap();
    while residue.physical > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        residue = runner.residue(&[user]).unwrap();
    }
    residue
}

#[test]
fn forgotten_users_leave_memory_while_the_workers_wait_for_input() {
    // After the forget is synced, no more input arrives: the batch of the forget's epoch must
    // be allowed to merge with the older ones, so that not even cancelled updates of the
    // forgotten user remain.
    for workers in [1, 2] {
        let runner = Runner::start(Cluster::local(workers), views()).unwrap();
        runner.sync(everyone(workers)).unwrap();
        let before = runner.residue(&[UserId(2)]).unwrap();
        assert!(
            before.live >= 25,
            "user 2 is held before the forget: {before:?}"
        );
        let retractions = history(2).into_iter().map(|e| (e, -1)).collect();
        runner.sync(epoch(30_000, workers, retractions)).unwrap();
        assert_eq!(
            runner.residue(&[UserId(2)]).unwrap().live,
            0,
            "{workers} workers"
        );
        let residue = physical_left(&runner, UserId(2));
        assert_eq!(residue.physical, 0, "{workers} workers: {residue:?}");
        // Users not forgotten are still held.
        assert!(runner.residue(&[UserId(3)]).unwrap().live >= 25);
        runner.finish(30_000, vec![UserId(2)]).unwrap();
    }
}

#[test]
fn idle_workers_finish_rewriting_large_batches() {
    // Many users in one segment: rewriting its arrangement's large batch takes many steps of
    // idle merging, more than the forget's own sync makes, so the workers must go on merging
    // while they wait for input.
    let mut config = ViewConfig::sessions_and_engagement(1_800);
    config.sessions = None;
    config.engagement = None;
    config.segments.push(Segment::Dormant(Dormant {
        name: "asleep".into(),
        within: 3_600,
    }));
    let users = 40_000u64;
    let runner = Runner::start(Cluster::local(1), config).unwrap();
    let load = (1..=users)
        .map(|u| (Event::new(UserId(u), 1_000, "view"), 1))
        .collect();
    runner.sync(epoch(20_000, 1, load)).unwrap();
    let forget = vec![(Event::new(UserId(2), 1_000, "view"), -1)];
    runner.sync(epoch(30_000, 1, forget)).unwrap();
    let residue = physical_left(&runner, UserId(2));
    assert_eq!(residue, behave::runtime::Residue::default());
    runner.finish(30_000, vec![UserId(2)]).unwrap();
}
