//! `hookwarden standalone` and `hookwarden get`: the product without a cluster.

use std::process::ExitCode;

/// Flags of `hookwarden standalone`.
#[derive(Debug, clap::Args)]
pub struct StandaloneArgs {}

/// Flags of `hookwarden get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {}

pub async fn run(_args: StandaloneArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("hookwarden standalone is not built yet")
}

pub async fn get(_args: GetArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("hookwarden get is not built yet")
}
