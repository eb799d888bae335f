//! `hookwarden verify`, `sign` and `send-test`.

use std::process::ExitCode;

/// Flags of `hookwarden verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {}
/// Flags of `hookwarden sign`.
#[derive(Debug, clap::Args)]
pub struct SignArgs {}
/// Flags of `hookwarden send-test`.
#[derive(Debug, clap::Args)]
pub struct SendTestArgs {}

pub fn verify(_args: VerifyArgs) -> ExitCode {
    eprintln!("hookwarden verify is not built yet");
    ExitCode::from(2)
}

pub fn sign(_args: SignArgs) -> ExitCode {
    eprintln!("hookwarden sign is not built yet");
    ExitCode::from(2)
}

pub async fn send_test(_args: SendTestArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("hookwarden send-test is not built yet")
}
