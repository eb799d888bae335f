//! `kubectl hookwarden` through the real kubectl plugin mechanism: the binary linked as
//! `kubectl-hookwarden` into a folder on PATH, `kubectl hookwarden …` finding it, against
//! the emulator (or a real cluster) with the real controller and a receiver. Covers `url`, `secret`,
//! `send-test` (through `--base-url`, as through a port-forward), `status`, `replay`, a
//! missing integration, and a user whose RBAC allows nothing.

use super::*;

const NAME: &str = "plugin-e2e";
const PLUGIN_SECRET: &str = "plugin-e2e-token";
const PLUGIN_TOKEN: &str = "plugin-datadog-token-0123456789";

/// `kubectl ARGS…` with `kubectl-hookwarden` on PATH and `kubeconfig` in KUBECONFIG
/// (kubectl hands plugins its environment; flags before the plugin's name would stop
/// kubectl from finding it). (exit code, stdout, stderr).
async fn kubectl_plugin(
    cluster: &Cluster,
    plugin_dir: &Path,
    kubeconfig: &Path,
    args: &[&str],
) -> (i32, String, String) {
    let path = format!(
        "{}:{}",
        plugin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(&cluster.kubectl);
    cmd.args(args)
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", cluster.path("home"));
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run kubectl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_hookwarden_finds_tests_and_describes_an_integration() {
    for kubectl in kubectls() {
        let mut cluster = Cluster::emulated().await;
        cluster.kubectl = kubectl;
        tokio::time::timeout(SCENARIO_LIMIT, plugin_scenario(cluster))
            .await
            .expect("test finished in time");
    }
}

/// The same against a real cluster (`KUBECONFIG=… cargo test --test it real_cluster --
/// --ignored`), once per kubectl of [`kubectls`]: the user without rights is a
/// ServiceAccount with a TokenRequest token and no bindings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: set KUBECONFIG and pass --ignored"]
async fn real_cluster_kubectl_hookwarden_finds_tests_and_describes_an_integration() {
    let _one_at_a_time = REAL_CLUSTER.lock().await;
    for kubectl in kubectls() {
        let mut cluster = Cluster::real().await;
        cluster.kubectl = kubectl;
        tokio::time::timeout(SCENARIO_LIMIT, plugin_scenario(cluster))
            .await
            .expect("test finished in time");
    }
}

async fn plugin_scenario(cluster: Cluster) {
    let ids = install(&cluster).await;
    // A real cluster keeps what an earlier run left: start from no integration and no Secret.
    remove_integration(&cluster, "default", NAME).await;
    let (ok, _, stderr) = cluster
        .kubectl(&[
            "delete",
            "secret",
            PLUGIN_SECRET,
            "-n",
            "default",
            "--ignore-not-found",
        ])
        .await;
    assert!(ok, "{stderr}");
    cluster
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            PLUGIN_SECRET,
            "-n",
            "default",
            &format!("--from-literal=token={PLUGIN_TOKEN}"),
        ])
        .await;
    cluster
        .apply(
            "plugin.yaml",
            &format!(
                "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata:\n  name: {NAME}\n  namespace: default\nspec:\n  provider: datadog\n  secretRef:\n    name: {PLUGIN_SECRET}\n    key: token\n"
            ),
        )
        .await;
    let controller = start_controller(&cluster, &ids);
    let receiver = start_receiver(&cluster, &ids, 0);
    let logs = || {
        format!(
            "--- controller ---\n{}\n--- receiver ---\n{}",
            controller.log(),
            receiver.process.log()
        )
    };

    // The plugin the way a user installs it: the binary linked under kubectl's name for it.
    let plugin_dir = cluster.path("plugins");
    std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_hookwarden"),
        plugin_dir.join("kubectl-hookwarden"),
    )
    .expect("symlink kubectl-hookwarden");
    let admin = cluster.path("admin.kubeconfig");
    // kubectl lists it as a plugin.
    let (code, out, err) = kubectl_plugin(&cluster, &plugin_dir, &admin, &["plugin", "list"]).await;
    assert!(
        code == 0 && out.contains("kubectl-hookwarden"),
        "{out}{err}"
    );

    // url: the URL and where the secret is, once the controller has written it.
    wait_for("status.url", Duration::from_secs(60), &logs, || async {
        cluster
            .get(&whi_resource(), "default", NAME)
            .await
            .is_some_and(|o| o["status"]["url"].is_string())
    })
    .await;
    let url = cluster
        .get(&whi_resource(), "default", NAME)
        .await
        .expect("integration")["status"]["url"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (code, out, err) = kubectl_plugin(
        &cluster,
        &plugin_dir,
        &admin,
        &["hookwarden", "url", NAME, "-n", "default"],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&format!("URL:     {url}")), "{out}");
    assert!(
        out.contains(&format!("Secret default/{PLUGIN_SECRET}, key \"token\"")),
        "{out}"
    );

    // secret: the value on stdout, the warning on stderr.
    let (code, out, err) = kubectl_plugin(
        &cluster,
        &plugin_dir,
        &admin,
        &["hookwarden", "secret", NAME, "-n", "default"],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), PLUGIN_TOKEN);
    assert!(err.contains("warning:"), "{err}");

    // send-test through --base-url (status.url's host is not reachable from here, as from
    // a laptop without a port-forward): resolves provider, secret and path itself.
    let base = format!("http://127.0.0.1:{}", receiver.port);
    let send = [
        "hookwarden",
        "send-test",
        NAME,
        "-n",
        "default",
        "--base-url",
        &base,
        "--incident-id",
        "plugin-disk",
    ];
    wait_for(
        "kubectl hookwarden send-test → 202",
        Duration::from_secs(60),
        &logs,
        || async {
            let (code, out, err) = kubectl_plugin(&cluster, &plugin_dir, &admin, &send).await;
            assert!(
                code == 0 || out.starts_with("404") || out.starts_with("503"),
                "{out}{err}"
            );
            code == 0 && out.starts_with("202")
        },
    )
    .await;

    // status: conditions, counters, the open incident.
    wait_for(
        "kubectl hookwarden status shows the delivery",
        Duration::from_secs(60),
        &logs,
        || async {
            let (code, out, _) = kubectl_plugin(
                &cluster,
                &plugin_dir,
                &admin,
                &["hookwarden", "status", NAME, "-n", "default"],
            )
            .await;
            code == 0 && out.contains("Accepted 1") && out.contains("Open: 1")
        },
    )
    .await;
    let (_, status, _) = kubectl_plugin(
        &cluster,
        &plugin_dir,
        &admin,
        &["hookwarden", "status", NAME, "-n", "default"],
    )
    .await;
    for expected in [
        &format!("Name:          {NAME}") as &str,
        "Provider:      datadog",
        &format!("URL:           {url}"),
        "Ready",
        "plugin-disk",
        "Events:",
    ] {
        assert!(status.contains(expected), "{expected:?} in\n{status}");
    }

    // replay: sets the annotation every receiver acts on.
    let (code, out, err) = kubectl_plugin(
        &cluster,
        &plugin_dir,
        &admin,
        &["hookwarden", "replay", NAME, "-n", "default"],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let annotated = cluster
        .get(&whi_resource(), "default", NAME)
        .await
        .expect("integration");
    assert!(
        annotated["metadata"]["annotations"]["hookwarden.dev/replay"].is_string(),
        "{annotated}"
    );

    // A name that does not exist, and a send-test with a bad --base-url.
    let (code, _, err) = kubectl_plugin(
        &cluster,
        &plugin_dir,
        &admin,
        &["hookwarden", "url", "no-such-integration", "-n", "default"],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("webhookintegrations.hookwarden.dev default/no-such-integration not found"),
        "{err}"
    );
    let (code, _, err) = kubectl_plugin(
        &cluster,
        &plugin_dir,
        &admin,
        &[
            "hookwarden",
            "send-test",
            NAME,
            "-n",
            "default",
            "--base-url",
            "not a url",
        ],
    )
    .await;
    assert_eq!(code, 2, "{err}");

    // A user whose RBAC grants nothing: told which permission is missing.
    cluster
        .apply(
            "nobody.yaml",
            "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: nobody\n  namespace: default\n",
        )
        .await;
    let token = cluster
        .kubectl_ok(&["create", "token", "nobody", "-n", "default"])
        .await;
    let admin_config = std::fs::read_to_string(&admin).expect("admin kubeconfig");
    let nobody = cluster.path("nobody.kubeconfig");
    std::fs::write(&nobody, kubeconfig_with_token(&admin_config, token.trim()))
        .expect("kubeconfig");
    let (code, _, err) = kubectl_plugin(
        &cluster,
        &plugin_dir,
        &nobody,
        &["hookwarden", "status", NAME],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "not allowed to get webhookintegrations.hookwarden.dev default/{NAME}"
        )),
        "{err}"
    );
    // Leave a real cluster as found (the controller still runs to remove the finalizer).
    cluster
        .kubectl_ok(&["delete", "whi", NAME, "-n", "default", "--wait=true"])
        .await;
}
