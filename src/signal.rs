//! Process signals, shared by every long-running subcommand.

/// Installs the SIGTERM and SIGINT (Ctrl-C) handlers at once and returns a future that
/// resolves on the first of them. Installing them before the future is first polled
/// matters: a SIGTERM that arrives without a handler kills the process on the spot,
/// without draining requests or flushing the journal to the status.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            match (term, interrupt) {
                (Ok(mut term), Ok(mut interrupt)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = interrupt.recv() => {}
                    }
                }
                (Ok(mut only), Err(e)) | (Err(e), Ok(mut only)) => {
                    tracing::warn!(error = %e, "cannot watch one of SIGTERM and SIGINT; only the other stops the process cleanly");
                    only.recv().await;
                }
                (Err(e), Err(_)) => {
                    tracing::error!(error = %e, "cannot watch SIGTERM or SIGINT; the process cannot be stopped cleanly");
                    std::future::pending::<()>().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
