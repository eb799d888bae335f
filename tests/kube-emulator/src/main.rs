//! `kube-emulator`: run the API-server emulator by hand and point kubectl or hookwarden at it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// A Kubernetes API-server emulator for trying hookwarden without a cluster (dev-only).
#[derive(Parser, Debug)]
#[command(name = "kube-emulator")]
struct Args {
    /// Write the admin kubeconfig here (it is always printed too).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Listen address (HTTPS).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Fixed admin token instead of a fresh one.
    #[arg(long)]
    token: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let emu = kube_emulator::Emulator::start_on(args.listen, args.token).await?;
    let kubeconfig = emu.kubeconfig();
    if let Some(path) = &args.kubeconfig {
        std::fs::write(path, &kubeconfig)?;
        eprintln!("kube-emulator: kubeconfig written to {}", path.display());
    }
    println!("{kubeconfig}");
    eprintln!(
        "kube-emulator: serving {} (ServiceAccount tokens: sa:<namespace>:<name>); Ctrl-C stops",
        emu.url()
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
