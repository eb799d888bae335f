//! All integration tests in one binary (one link step instead of one per file).

mod chart;
mod controller;
mod e2e;
mod emulator;
mod journal;
mod signatures;
