//! `views::history::history_views` (the per-user history fold the runtime uses) against the
//! library views `views::sessions` and `views::engagement` (`reduce`s over an arrangement): on
//! random streams with forgets, batched into epochs, on 1 and 3 workers, both must give the
//! same output changes at the same times, not only the same final rows.

mod common;

use behave::event::{Event, UserId};
use behave::views::history::{history_views, HistoryRow, HistoryViews};
use behave::views::{engagement, sessions};
use common::dataflow::{run_view, schedule};
use differential_dataflow::consolidation::consolidate_updates;
use proptest::prelude::*;

const START: i64 = 1_704_067_200; // 2024-01-01T00:00:00Z
const GAP: i64 = 1_800;
const OFFSET: i64 = 5 * 3_600;

fn arb_events() -> impl Strategy<Value = (Vec<Event>, Vec<(u64, i64)>)> {
    let event = (0u64..6, 0i64..(5 * 86_400)).prop_map(|(user, offset)| {
        // Times on a 10-minute grid, so sessions of several events and equal times occur.
        Event::new(UserId(user), START + offset - offset % 600, "view")
    });
    let forget = (0u64..6, 0i64..(5 * 86_400)).prop_map(|(user, offset)| (user, START + offset));
    (
        prop::collection::vec(event, 0..60),
        prop::collection::vec(forget, 0..3),
    )
}

/// Every output change, consolidated and sorted, as `(user, row)`.
type Changes = Vec<((UserId, HistoryRow), u64, isize)>;

fn consolidated(mut changes: Changes) -> Changes {
    consolidate_updates(&mut changes);
    changes.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    changes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn history_fold_gives_the_changes_of_the_reduces(
        (events, forgets) in arb_events(),
        tick in prop_oneof![Just(600i64), Just(3_600), Just(86_400)],
        workers in prop_oneof![Just(1usize), Just(3)],
        which in 0u8..3,
        engagement_gap in prop_oneof![Just(GAP), Just(4 * GAP)],
    ) {
        // Engagement counts sessions with its own gap, the same as the sessions' or another.
        let views = HistoryViews {
            sessions: (which != 1).then_some(GAP),
            engagement: (which != 0).then_some((engagement_gap, OFFSET)),
        };
        let (updates, _, survivors) = schedule(&events, &forgets, tick, START);
        let folded = run_view(workers, &updates, move |events| {
            history_views(events, views).0
        });
        let reduced = run_view(workers, &updates, move |events| {
            let mut parts = Vec::new();
            if let Some(gap) = views.sessions {
                parts.push(
                    sessions(events.clone(), gap).map(|(u, s)| (u, HistoryRow::Session(s))),
                );
            }
            if let Some((gap, offset)) = views.engagement {
                parts.push(
                    engagement(events.clone(), gap, offset)
                        .map(|(u, e)| (u, HistoryRow::Engagement(e))),
                );
            }
            differential_dataflow::collection::concatenate(events.scope(), parts)
        });
        let folded = consolidated(folded);
        prop_assert_eq!(&folded, &consolidated(reduced));
        // Surviving events leave rows: the comparison is not between two empty outputs.
        prop_assert!(survivors.is_empty() || !folded.is_empty());
    }
}
