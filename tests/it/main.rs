mod journal;
mod standalone;
mod status_writer;
