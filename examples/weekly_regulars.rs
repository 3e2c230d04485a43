//! A custom dataflow built from behave's views outside the crate: "regulars", users with three
//! or more sessions within one ISO week, kept up to date as events and forget requests arrive.
//!
//! Run: `cargo run --example weekly_regulars`

use behave::event::{Event, UserId};
use behave::views::{self, Session};
use differential_dataflow::input::InputSession;
use std::sync::{Arc, Mutex};
use timely::dataflow::ProbeHandle;

const HOUR: i64 = 3_600;
const DAY: i64 = 24 * HOUR;
/// 2024-01-01, a Monday.
const MONDAY: i64 = 1_704_067_200;

fn main() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    timely::execute(timely::Config::process(2), move |worker| {
        let mut input: InputSession<u64, Event, isize> = InputSession::new();
        let probe = ProbeHandle::new();
        let sink = sink.clone();
        worker.dataflow::<u64, _, _>(|scope| {
            let events = input.to_collection(scope);
            views::sessions(events, 30 * 60)
                // The ISO week (Monday-based) in which each session started.
                .map(|(user, session): (UserId, Session)| {
                    (user, (session.start - MONDAY).div_euclid(7 * DAY))
                })
                .count()
                .filter(|(_, sessions)| *sessions >= 3)
                .map(|((user, week), _)| (user, week))
                .inspect(move |((user, week), time, diff)| {
                    sink.lock().unwrap().push((*time, *user, *week, *diff));
                })
                .probe_with(&probe);
        });

        // Worker 0 plays the stream; both workers step the dataflow.
        if worker.index() == 0 {
            for day in 0..4 {
                for user in [1u64, 2] {
                    // User 1 comes every day, user 2 only twice.
                    if user == 1 || day < 2 {
                        input.insert(Event::new(
                            UserId(user),
                            MONDAY + day * DAY + 9 * HOUR,
                            "lesson_view",
                        ));
                    }
                }
            }
        }
        input.advance_to(1);
        input.flush();
        worker.step_while(|| probe.less_than(input.time()));

        // User 1 asks to be forgotten: retract their events; the custom view follows.
        if worker.index() == 0 {
            for day in 0..4 {
                input.remove(Event::new(
                    UserId(1),
                    MONDAY + day * DAY + 9 * HOUR,
                    "lesson_view",
                ));
            }
        }
        input.advance_to(2);
        input.flush();
        worker.step_while(|| probe.less_than(input.time()));
    })
    .expect("timely starts");

    let mut changes = seen.lock().unwrap().clone();
    changes.sort();
    for (time, user, week, diff) in &changes {
        println!("epoch {time}: user {user} regular in week {week}: {diff:+}");
    }
    assert_eq!(
        changes,
        vec![(0, UserId(1), 0, 1), (1, UserId(1), 0, -1)],
        "user 1 becomes a regular, then vanishes when forgotten"
    );
}
