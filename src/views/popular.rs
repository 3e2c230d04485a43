//! The items ranked by popularity, to the depth that cold-start users need.
//!
//! A cold user (no neighbours, or opted out of personalization) is recommended the most popular
//! items they have not seen, so the recommendations need the first `n + |I_u| + |D_u|` items of
//! the popularity ranking for each such user. Ranking every item with a differential `reduce`
//! over one key re-reads the whole catalog and restates the ranks of every item that moved
//! whenever one item's count changes, which a forget does for each of the user's items: on
//! MovieLens 100k, a quarter of a forget's time, with no cold user at all. [`popular_ranks`]
//! keeps the ranking in place instead and emits only the first `depth` ranks, `depth` being the
//! largest budget a cold user has at that time (none when there is no cold user).
//!
//! Its state names no user: item counts, and how many cold users have each budget.

use super::cosine::in_time_order;
use super::{add_count, Diff};
use crate::event::Sym;
use differential_dataflow::{AsCollection, VecCollection};
use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::rc::Rc;
use timely::dataflow::channels::pact::Exchange;

/// A rank of the popularity ranking: `(rank, (item, users))`, rank 0 the most popular.
pub type PopularRank = (u32, (Sym, u64));

/// The ranking state, on the one worker that ranks.
#[derive(Default)]
struct Ranking {
    /// Every `(item, users)` record, ordered by users descending then item ascending, with its
    /// multiplicity (present when positive).
    order: BTreeMap<(Reverse<u64>, Sym), Diff>,
    /// The budgets of the cold users, as a multiset (how many cold users have each budget).
    budgets: BTreeMap<u32, Diff>,
    /// The ranks last emitted, best first.
    emitted: Vec<(Sym, u64)>,
}

impl Ranking {
    /// Applies one time's changes of popularity and of budgets and returns the changes of the
    /// ranks `(rank, (item, users))` below the largest budget.
    fn apply(
        &mut self,
        popularity: Vec<((Sym, u64), Diff)>,
        budgets: Vec<(u32, Diff)>,
    ) -> Vec<(PopularRank, Diff)> {
        for ((item, users), diff) in popularity {
            add_count(&mut self.order, (Reverse(users), item), diff);
        }
        for (budget, diff) in budgets {
            add_count(&mut self.budgets, budget, diff);
        }
        let depth = self
            .budgets
            .iter()
            .rev()
            .find(|(_, count)| **count > 0)
            .map_or(0, |(budget, _)| *budget as usize);
        let ranked: Vec<(Sym, u64)> = self
            .order
            .iter()
            .filter(|(_, count)| **count > 0)
            .map(|((Reverse(users), item), _)| (*item, *users))
            .take(depth)
            .collect();
        let mut out = Vec::new();
        for rank in 0..ranked.len().max(self.emitted.len()) {
            let (old, new) = (self.emitted.get(rank), ranked.get(rank));
            if old != new {
                if let Some(old) = old {
                    out.push(((rank as u32, *old), -1));
                }
                if let Some(new) = new {
                    out.push(((rank as u32, *new), 1));
                }
            }
        }
        self.emitted = ranked;
        out
    }
}

/// The ranks `(rank, (item, users))` of the popularity ranking (users descending, then item
/// ascending; rank 0 is the most popular) from item popularity `(item, users)`, for the ranks
/// below the largest of `budgets` (one record per cold user: how many ranks that user needs).
/// Exactly the ranking of every item, cut at that depth.
///
/// ```
/// use behave::event::Sym;
/// use behave::views::popular::popular_ranks;
/// use differential_dataflow::input::Input;
/// use std::{cell::RefCell, rc::Rc};
///
/// let seen = timely::execute_directly(|worker| {
///     let seen = Rc::new(RefCell::new(Vec::new()));
///     let sink = seen.clone();
///     let (mut items, mut budgets, probe) = worker.dataflow::<u64, _, _>(|scope| {
///         let (items, popularity) = scope.new_collection::<(Sym, u64), isize>();
///         let (budgets, depth) = scope.new_collection::<u32, isize>();
///         let probe = popular_ranks(popularity, depth)
///             .inspect(move |(rank, _time, diff)| sink.borrow_mut().push((*rank, *diff)))
///             .probe()
///             .0;
///         (items, budgets, probe)
///     });
///     items.insert((Sym(7), 3));
///     items.insert((Sym(8), 5));
///     items.insert((Sym(9), 1));
///     budgets.insert(2); // a cold user needs the first two ranks
///     items.advance_to(1);
///     budgets.advance_to(1);
///     items.flush();
///     budgets.flush();
///     worker.step_while(|| probe.less_than(items.time()));
///     let mut seen = seen.borrow().clone();
///     seen.sort();
///     seen
/// });
/// assert_eq!(seen, vec![((0, (Sym(8), 5)), 1), ((1, (Sym(7), 3)), 1)]);
/// ```
pub fn popular_ranks<'s>(
    popularity: VecCollection<'s, u64, (Sym, u64), Diff>,
    budgets: VecCollection<'s, u64, u32, Diff>,
) -> VecCollection<'s, u64, PopularRank, Diff> {
    let ranking = Rc::new(RefCell::new(Ranking::default()));
    in_time_order(
        popularity.inner,
        budgets.inner,
        Exchange::new(|_: &((Sym, u64), u64, Diff)| 0),
        Exchange::new(|_: &(u32, u64, Diff)| 0),
        "PopularRanks",
        move |popularity, budgets| ranking.borrow_mut().apply(popularity, budgets),
    )
    .as_collection()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ranking of every present item, cut at `depth`: what the operator must emit.
    fn oracle(items: &[(Sym, u64)], depth: usize) -> Vec<(Sym, u64)> {
        let mut all = items.to_vec();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(depth);
        all
    }

    #[test]
    fn emits_the_changed_ranks_below_the_largest_budget() {
        let mut ranking = Ranking::default();
        let items = [(Sym(1), 4), (Sym(2), 9), (Sym(3), 4), (Sym(4), 1)];
        let out = ranking.apply(items.iter().map(|i| (*i, 1)).collect(), vec![(3, 1)]);
        let mut emitted: Vec<(u32, (Sym, u64))> = out
            .iter()
            .filter(|(_, d)| *d > 0)
            .map(|(r, _)| *r)
            .collect();
        emitted.sort();
        let expected: Vec<(u32, (Sym, u64))> = oracle(&items, 3)
            .into_iter()
            .enumerate()
            .map(|(rank, item)| (rank as u32, item))
            .collect();
        assert_eq!(emitted, expected);
        // Item 3's last user is forgotten: item 4 moves up into rank 2, and nothing else moves.
        let mut out = ranking.apply(vec![((Sym(3), 4), -1)], vec![]);
        out.sort();
        assert_eq!(out, vec![((2, (Sym(3), 4)), -1), ((2, (Sym(4), 1)), 1)]);
        // Item 1 gains users and passes item 2: ranks 0 and 1 swap.
        let mut out = ranking.apply(vec![((Sym(1), 4), -1), ((Sym(1), 10), 1)], vec![]);
        out.sort();
        assert_eq!(
            out,
            vec![
                ((0, (Sym(1), 10)), 1),
                ((0, (Sym(2), 9)), -1),
                ((1, (Sym(1), 4)), -1),
                ((1, (Sym(2), 9)), 1)
            ]
        );
        // The last cold user leaves: every rank is retracted, and nothing is held for ranks.
        let out = ranking.apply(vec![], vec![(3, -1)]);
        assert_eq!(out.iter().filter(|(_, d)| *d < 0).count(), 3);
        assert!(ranking.budgets.is_empty() && ranking.emitted.is_empty());
    }
}
