//! The receiver's durable delivery journal.
