use std::process::ExitCode;

/// mimalloc instead of the C library's allocator: the receiver allocates per request
/// (headers, bodies, journal records), glibc's malloc showed up at ~14% of a profile
/// under load, and the release image links musl, whose allocator is slower still.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    hookwarden::cli::main()
}
