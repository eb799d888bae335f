mod journal;
mod receiver_http;
mod standalone;
mod status_writer;
