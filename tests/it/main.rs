
mod journal;
