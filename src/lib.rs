//! # behave
//!
//! Continuously updated user-behaviour analytics on timely and differential dataflow: sessions
//! and engagement features, segments, retention, user and item similarity and recommendations,
//! maintained incrementally as events and GDPR forget requests
//! arrive, on any number of worker threads and processes. A forgotten user vanishes from every
//! view, and the result is exactly what it would be had they never existed.
//!
//! `behave` is a library first: every view in [`views`] is a function from differential
//! collections to collections, to compose inside your own dataflows (see `examples/`). The
//! `behave` binary replays event files through the same functions ([`runtime`]).

pub mod cli;
pub mod cluster_test;
pub mod evaluate;
pub mod event;
pub mod ingest;
pub mod output;
pub mod privacy;
pub mod replay;
pub mod runtime;
pub mod spec;
pub mod time;
pub mod views;
