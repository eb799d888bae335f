//! The data plane: `hookwarden receiver`.

pub mod sink;

use std::process::ExitCode;

/// Flags of `hookwarden receiver`.
#[derive(Debug, clap::Args)]
pub struct ReceiverArgs {}

pub async fn run(_args: ReceiverArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("hookwarden receiver is not built yet")
}
