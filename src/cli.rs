//! Command line: one binary, one subcommand per component or tool.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kube::CustomResourceExt as _;

use crate::crd::WebhookIntegration;

/// Kubernetes operator for incoming webhooks.
#[derive(Debug, Parser)]
#[command(name = "hookwarden", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Reconcile WebhookIntegrations into routes and Secrets (in cluster, leader-elected).
    Controller(crate::controller::ControllerArgs),
    /// Serve /hooks/…: verify, deduplicate, acknowledge, map incidents, write status.
    Receiver(crate::receiver::ReceiverArgs),
    /// Controller and receiver in one process over a folder of YAML, no cluster needed.
    Standalone(crate::standalone::StandaloneArgs),
    /// Show standalone integrations as `kubectl get webhookintegrations` would.
    Get(crate::standalone::GetArgs),
    /// Print the CustomResourceDefinition YAML (the source of crds/).
    Crdgen,
    /// Check one delivery offline: exit 0 valid, 1 invalid, 2 usage error.
    Verify(crate::tools::VerifyArgs),
    /// Print the headers a provider would send for a body.
    Sign(crate::tools::SignArgs),
    /// Send a signed, realistic sample delivery to a URL and print the answer.
    SendTest(crate::tools::SendTestArgs),
    /// Re-queue an integration's dead-lettered forwards (cluster: sets the
    /// hookwarden.dev/replay annotation; standalone with --dir/--state: directly).
    Replay(crate::standalone::ReplayArgs),
    /// `kubectl hookwarden`: url, secret, send-test, status and replay through the
    /// kubeconfig (what the binary does when installed as `kubectl-hookwarden`).
    Kubectl(crate::plugin::PluginArgs),
}

/// The CRD as YAML, exactly as committed under `crds/`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&WebhookIntegration::crd())
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    // Installed as `kubectl-hookwarden` (symlink or copy): kubectl's plugin mechanism
    // runs it with the plugin's own arguments.
    let command = if crate::plugin::invoked_as_plugin(std::env::args_os().next().as_deref()) {
        Command::Kubectl(crate::plugin::PluginCli::parse().args)
    } else {
        Cli::parse().command
    };
    match command {
        Command::Crdgen => match crd_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot render the CRD: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Verify(args) => crate::tools::verify(args),
        Command::Sign(args) => crate::tools::sign(args),
        command => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(async move {
                match command {
                    Command::Controller(args) => crate::controller::run(args).await,
                    Command::Receiver(args) => crate::receiver::run(args).await,
                    Command::Standalone(args) => crate::standalone::run(args).await,
                    Command::Get(args) => crate::standalone::get(args).await,
                    Command::SendTest(args) => crate::tools::send_test(args).await,
                    Command::Replay(args) => crate::standalone::replay(args).await,
                    Command::Kubectl(args) => Ok(crate::plugin::run(args).await),
                    Command::Crdgen | Command::Verify(_) | Command::Sign(_) => {
                        unreachable_command()
                    }
                }
            });
            match result {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn unreachable_command() -> anyhow::Result<ExitCode> {
    anyhow::bail!("command handled before the runtime started")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser as _;

    use super::{Cli, Command};
    use crate::receiver::service::DEFAULT_JOURNAL_COMMIT_WINDOW;

    fn commit_window(args: &[&str]) -> Result<Duration, clap::Error> {
        Ok(match Cli::try_parse_from(args)?.command {
            Command::Standalone(a) => a.journal_commit_window,
            Command::Receiver(a) => a.journal_commit_window,
            other => panic!("unexpected command {other:?}"),
        })
    }

    /// clap checks a command's definition only when it is built: two flags of one name
    /// (say two `--auth`) would pass every unit test and panic in the shipped binary.
    #[test]
    fn every_command_line_definition_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
        crate::plugin::PluginCli::command().debug_assert();
    }

    #[test]
    fn lease_durations_too_short_to_renew_in_are_refused() {
        let lease = |value: &str| {
            Cli::try_parse_from([
                "hookwarden",
                "controller",
                "--lease-duration-seconds",
                value,
            ])
            .map(|cli| match cli.command {
                Command::Controller(a) => a.lease_duration_seconds,
                other => panic!("unexpected command {other:?}"),
            })
        };
        assert_eq!(lease("3").expect("3 s"), 3);
        assert_eq!(lease("15").expect("15 s"), 15);
        for refused in ["0", "1", "2", "3601"] {
            assert!(lease(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn journal_commit_window_defaults_parses_and_refuses_long_waits() {
        for command in [
            &["hookwarden", "standalone", "--dir", "."][..],
            &["hookwarden", "receiver", "--namespace", "ns"][..],
        ] {
            assert_eq!(
                commit_window(command).expect("defaults"),
                DEFAULT_JOURNAL_COMMIT_WINDOW,
                "{command:?}"
            );
        }
        let with = |value: &str| {
            commit_window(&[
                "hookwarden",
                "standalone",
                "--dir",
                ".",
                "--journal-commit-window",
                value,
            ])
        };
        assert_eq!(with("0").expect("none"), Duration::ZERO);
        assert_eq!(with("1.5ms").expect("ms"), Duration::from_micros(1500));
        assert_eq!(with("250us").expect("us"), Duration::from_micros(250));
        let long = with("2s").expect_err("a 2 s wait is refused").to_string();
        assert!(long.contains("longer than 100ms"), "{long}");
        assert!(with("soon").is_err());
    }

    #[test]
    fn dedup_max_ids_defaults_to_the_documented_capacity_and_is_bounded() {
        let ids = |extra: &[&str]| {
            let mut standalone = vec!["hookwarden", "standalone", "--dir", "."];
            standalone.extend(extra);
            let mut receiver = vec!["hookwarden", "receiver", "--namespace", "ns"];
            receiver.extend(extra);
            [standalone, receiver].map(|args| {
                Cli::try_parse_from(args).map(|cli| match cli.command {
                    Command::Standalone(a) => a.dedup_max_ids,
                    Command::Receiver(a) => a.dedup_max_ids,
                    other => panic!("unexpected command {other:?}"),
                })
            })
        };
        for parsed in ids(&[]) {
            assert_eq!(parsed.expect("default"), 200_000);
        }
        for parsed in ids(&["--dedup-max-ids", "2000000"]) {
            assert_eq!(parsed.expect("set"), 2_000_000);
        }
        for refused in ["0", "999", "100000001", "many"] {
            for parsed in ids(&["--dedup-max-ids", refused]) {
                assert!(parsed.is_err(), "{refused}");
            }
        }
    }
}
