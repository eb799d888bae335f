
mod standalone;
mod status_writer;
