//! A harness for library-level view tests: feed timed updates through a dataflow on several
//! workers, capture the output, and accumulate it at an as-of time.

use behave::event::Event;
use behave::views::window::Expiry;
use differential_dataflow::input::InputSession;
use differential_dataflow::VecCollection;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use timely::dataflow::operators::vec::input::Handle;

/// One input update: the event, the logical time it enters (or leaves) at, and the diff.
pub type Update = (Event, u64, isize);

/// Runs `view` over `updates` (each worker feeding the users with `user % peers == index`,
/// advancing through the logical times in order) and returns every output update.
pub fn run_view<D, F>(workers: usize, updates: &[Update], view: F) -> Vec<(D, u64, isize)>
where
    D: Clone + Send + 'static,
    F: for<'s> Fn(VecCollection<'s, u64, Event, isize>) -> VecCollection<'s, u64, D, isize>
        + Send
        + Sync
        + 'static,
{
    run_view_ticked(workers, updates, None, move |events, _| view(events))
}

/// [`run_view`] for views with sliding windows: with `ticks_until = Some(as_of)` the view gets
/// a clock that ticks at every logical time of `updates` and at `as_of` (as the runtime ticks at
/// its epochs), else windows expire at the exact second.
pub fn run_view_ticked<D, F>(
    workers: usize,
    updates: &[Update],
    ticks_until: Option<u64>,
    view: F,
) -> Vec<(D, u64, isize)>
where
    D: Clone + Send + 'static,
    F: for<'s> Fn(
            VecCollection<'s, u64, Event, isize>,
            Expiry<'s>,
        ) -> VecCollection<'s, u64, D, isize>
        + Send
        + Sync
        + 'static,
{
    let mut updates = updates.to_vec();
    updates.sort_by_key(|u| u.1);
    let updates = Arc::new(updates);
    let captured = Arc::new(Mutex::new(Vec::new()));
    let sink = captured.clone();
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let index = worker.index();
        let peers = worker.peers();
        let mut input: InputSession<u64, Event, isize> = InputSession::new();
        let mut ticks: Handle<u64, ()> = Handle::new();
        let sink = sink.clone();
        worker.dataflow::<u64, _, _>(|scope| {
            let expiry_at = match ticks_until {
                Some(_) => Expiry::Ticks(ticks.to_stream(scope)),
                None => Expiry::Exact,
            };
            view(input.to_collection(scope), expiry_at)
                .inspect(move |u| sink.lock().unwrap().push(u.clone()));
        });
        let tick = |time: u64, ticks: &mut Handle<u64, ()>| {
            if ticks_until.is_some() && time >= *ticks.time() {
                ticks.advance_to(time);
                ticks.send(());
                ticks.advance_to(time + 1);
            }
        };
        for (event, time, diff) in updates.iter() {
            if *time > *input.time() {
                input.advance_to(*time);
                input.flush();
                worker.step();
            }
            tick(*time, &mut ticks);
            if event.user.0 as usize % peers == index {
                input.update(event.clone(), *diff);
            }
        }
        if let Some(as_of) = ticks_until {
            tick(as_of, &mut ticks);
        }
    })
    .expect("timely runs");
    drop(guards);
    let out = captured.lock().unwrap().clone();
    out
}

/// The accumulated collection at `as_of`: every datum with its non-zero multiplicity.
pub fn at<D: Ord + Clone>(updates: &[(D, u64, isize)], as_of: u64) -> BTreeMap<D, isize> {
    let mut acc = BTreeMap::new();
    for (d, t, r) in updates {
        if *t <= as_of {
            *acc.entry(d.clone()).or_insert(0) += r;
        }
    }
    acc.retain(|_, r| *r != 0);
    acc
}

/// Input updates for `events` batched into epochs of `tick` seconds, with forget requests
/// `(user, time)`: a forgotten user's events up to the (first) forget time are inserted and then
/// retracted at the forget time; later ones are never inserted. Returns the updates, the as-of
/// time (the largest event or forget time) and the surviving events.
pub fn schedule(
    events: &[Event],
    forgets: &[(u64, i64)],
    tick: i64,
    empty_as_of: i64,
) -> (Vec<Update>, i64, Vec<Event>) {
    let as_of = events
        .iter()
        .map(|e| e.time)
        .chain(forgets.iter().map(|f| f.1))
        .max()
        .unwrap_or(empty_as_of);
    let logical = |t: i64| ((t + tick - 1).div_euclid(tick) * tick).min(as_of) as u64;
    let mut forget_at: BTreeMap<u64, i64> = BTreeMap::new();
    for &(user, time) in forgets {
        let f = forget_at.entry(user).or_insert(time);
        *f = (*f).min(time);
    }
    let mut updates = Vec::new();
    let mut survivors = Vec::new();
    for e in events {
        match forget_at.get(&e.user.0) {
            None => {
                updates.push((e.clone(), logical(e.time), 1));
                survivors.push(e.clone());
            }
            Some(&f) if e.time <= f => {
                updates.push((e.clone(), logical(e.time), 1));
                updates.push((e.clone(), logical(f), -1));
            }
            Some(_) => {}
        }
    }
    (updates, as_of, survivors)
}

/// Each event inserted at the logical time equal to its event time.
pub fn inserts(events: &[Event]) -> Vec<Update> {
    events
        .iter()
        .map(|e| (e.clone(), e.time as u64, 1))
        .collect()
}

/// Feeds `(data, time, diff)` updates to `input`, each sent at input time `sent` (so updates
/// for later times arrive early), by the worker for which `mine(index, &data)` holds, in small
/// batches (a flush and a step after every third update); then closes the input and runs the
/// worker to the end.
pub fn feed<D: differential_dataflow::Data>(
    worker: &mut timely::worker::Worker,
    mut input: InputSession<u64, D, isize>,
    updates: &[(u64, (D, u64, isize))],
    mine: impl Fn(usize, &D) -> bool,
) {
    for (i, (sent, (data, time, diff))) in updates.iter().enumerate() {
        if *sent > *input.time() {
            input.advance_to(*sent);
            input.flush();
            worker.step();
        }
        if mine(i, data) {
            input.update_at(data.clone(), (*time).max(*sent), *diff);
            if i % 3 == 0 {
                input.flush();
                worker.step();
            }
        }
    }
    input.close();
    while worker.step() {}
}

/// Where a test dataflow puts its output updates.
pub type Sink<D> = Arc<Mutex<Vec<D>>>;

/// Runs `build(worker, sink)` on each of `workers` workers and returns everything they put in
/// their sinks.
pub fn capture<D, F>(workers: usize, build: F) -> Vec<D>
where
    D: Clone + Send + 'static,
    F: Fn(&mut timely::worker::Worker, Sink<D>) + Send + Sync + 'static,
{
    let captured: Sink<D> = Arc::new(Mutex::new(Vec::new()));
    let sink = captured.clone();
    timely::execute(timely::Config::process(workers), move |worker| {
        build(worker, sink.clone())
    })
    .expect("timely runs");
    let out = captured.lock().unwrap().clone();
    out
}
