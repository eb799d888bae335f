//! All integration tests in one binary (one link step instead of one per file).

mod controller;
mod journal;
mod receiver_http;
mod signatures;
