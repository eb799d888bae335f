use std::process::ExitCode;

fn main() -> ExitCode {
    hookwarden::cli::main()
}
