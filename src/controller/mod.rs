//! `hookwarden controller`.

use std::process::ExitCode;

/// Flags of `hookwarden controller`.
#[derive(Debug, clap::Args)]
pub struct ControllerArgs {}

pub async fn run(_args: ControllerArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("hookwarden controller is not built yet")
}
