//! `spec.forward` end to end on the API-server emulator: the real controller resolves a
//! `urlFrom` Secret and generates the signing key into `<name>-forward`; real receivers
//! (run with `--forward-allow-loopback`, so they may reach a recording target on
//! 127.0.0.1) forward what they accept, retry, survive `kill -9` with a retry pending,
//! dead-letter, and replay on the annotation and on `hookwarden replay`; a receiver
//! without the flag refuses loopback, a name that resolves to it, and cloud metadata.
//! All traffic stays on 127.0.0.1 (a refused target is never connected to).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use hookwarden::crd::ProviderKind;
use hookwarden::domain::signature::{self, Delivery, Scheme, Verdict};
use http_body_util::BodyExt as _;

use super::*;

const NAME: &str = "fwd-e2e";
const SSRF_NAME: &str = "fwd-ssrf";
/// Every wait in this scenario; the scenario as a whole has [`SCENARIO_LIMIT`].
const STEP: Duration = Duration::from_secs(45);

/// One request the target received.
struct Seen {
    path: String,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Seen {
    fn webhook_id(&self) -> String {
        self.headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    /// `delivery.id` of a standard-webhooks body: the Datadog delivery's id.
    fn delivery_id(&self) -> String {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v["delivery"]["id"].as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// A local HTTP target that records every request and every accepted connection, and
/// answers from a script (200 once it is empty).
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<Seen>>,
    script: Mutex<VecDeque<u16>>,
    connections: AtomicUsize,
}

impl Recorder {
    async fn start() -> (Arc<Recorder>, u16) {
        let recorder = Arc::new(Recorder::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the target");
        let port = listener.local_addr().expect("addr").port();
        let rec = recorder.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                rec.connections.fetch_add(1, Ordering::SeqCst);
                let rec = rec.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: http::Request<hyper::body::Incoming>| {
                            let rec = rec.clone();
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = body
                                    .collect()
                                    .await
                                    .map(|c| c.to_bytes())
                                    .unwrap_or_default();
                                rec.seen.lock().expect("lock").push(Seen {
                                    path: parts.uri.path().to_string(),
                                    headers: parts.headers,
                                    body,
                                });
                                let code = rec.script.lock().expect("lock").pop_front();
                                let mut response =
                                    http::Response::new(http_body_util::Empty::<Bytes>::new());
                                *response.status_mut() =
                                    http::StatusCode::from_u16(code.unwrap_or(200))
                                        .expect("status");
                                Ok::<_, Infallible>(response)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (recorder, port)
    }

    fn answer_next(&self, codes: &[u16]) {
        self.script.lock().expect("lock").extend(codes);
    }

    /// The webhook-ids of the requests for Datadog delivery `id`, in arrival order.
    fn attempts_of(&self, id: &str) -> Vec<String> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            // Datadog's delivery id is `<id>:<transition>`.
            .filter(|s| s.delivery_id().split(':').next() == Some(id))
            .map(Seen::webhook_id)
            .collect()
    }

    fn summary(&self) -> String {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .map(|s| format!("{} {} {}\n", s.path, s.webhook_id(), s.delivery_id()))
            .collect()
    }
}

fn integration(name: &str, targets: &str) -> String {
    format!(
        "apiVersion: hookwarden.dev/v1alpha1\nkind: WebhookIntegration\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  provider: datadog\n  secretRef: {{name: fwd-e2e-token, key: token}}\n  forward:\n{targets}"
    )
}

/// `status.forwarding[]` entry `target` of `obj`.
fn forwarding(obj: &Value, target: &str) -> Value {
    obj["status"]["forwarding"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["name"] == target).cloned())
        .unwrap_or(Value::Null)
}

fn count(entry: &Value, field: &str) -> i64 {
    entry[field].as_i64().unwrap_or(0)
}

/// Every log of the scenario (controller, each replica across its restarts).
fn all_logs(cluster: &Cluster) -> String {
    let mut names: Vec<PathBuf> = std::fs::read_dir(cluster.dir.path())
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    names.retain(|p| p.extension().is_some_and(|e| e == "log"));
    names.sort();
    names
        .iter()
        .map(|p| {
            format!(
                "--- {} ---\n{}",
                p.file_name().unwrap_or_default().to_string_lossy(),
                std::fs::read_to_string(p).unwrap_or_default()
            )
        })
        .collect()
}

/// Sends Datadog delivery `id` to `url` until it is accepted (no answer, 404 and 503
/// until the replica serves the route; the same id, so at most one copy counts).
async fn deliver(url: &str, id: &str, logs: &dyn Fn() -> String) {
    let (url, id) = (url.to_string(), id.to_string());
    wait_for(&format!("{id} accepted at {url}"), STEP, logs, || {
        let (url, id) = (url.clone(), id.clone());
        async move {
            let sent = id.clone();
            let code = tokio::task::spawn_blocking(move || {
                crate::standalone::datadog(&url, &sent, &format!("key-{sent}"), "Triggered")
            })
            .await
            .expect("join");
            // None: the replica is not listening yet.
            assert!(
                matches!(code, None | Some(202 | 404 | 503)),
                "{id} answered {code:?}"
            );
            code == Some(202)
        }
    })
    .await;
}

fn assert_signed(seen: &Seen, key: &str) {
    let delivery = Delivery {
        method: "POST",
        url: "",
        headers: &seen.headers,
        body: &seen.body,
    };
    let verdict = signature::verify(
        &Scheme::preset(ProviderKind::StandardWebhooks),
        &[key],
        &delivery,
        jiff::Timestamp::now().as_second(),
    );
    assert!(
        matches!(verdict, Verdict::Valid(_)),
        "{} {}: {verdict:?}",
        seen.path,
        seen.webhook_id()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_from_two_receivers_retry_through_kill_9_dead_letter_replay_and_refuse_ssrf() {
    tokio::time::timeout(SCENARIO_LIMIT, forward_scenario(Cluster::emulated().await))
        .await
        .expect("test finished in time");
}

/// The same against a real cluster (`KUBECONFIG=… cargo test --test it real_cluster --
/// --ignored`); the check that no request was refused by RBAC needs the emulator's request
/// log and is skipped there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real cluster: set KUBECONFIG and pass --ignored"]
async fn real_cluster_forwards_from_two_receivers_retry_through_kill_9_dead_letter_replay_and_refuse_ssrf()
 {
    let _one_at_a_time = REAL_CLUSTER.lock().await;
    tokio::time::timeout(SCENARIO_LIMIT, forward_scenario(Cluster::real().await))
        .await
        .expect("test finished in time");
}

async fn forward_scenario(cluster: Cluster) {
    let started = tokio::time::Instant::now();
    let emu = cluster.emu.as_ref();
    let ids = install(&cluster).await;
    // What an earlier run on a real cluster left.
    for name in [NAME, SSRF_NAME] {
        remove_integration(&cluster, "default", name).await;
    }
    for secret in ["fwd-e2e-token", "fwd-e2e-target"] {
        let (ok, _, stderr) = cluster
            .kubectl(&[
                "delete",
                "secret",
                secret,
                "-n",
                "default",
                "--ignore-not-found",
            ])
            .await;
        assert!(ok, "{stderr}");
    }
    let (target, port) = Recorder::start().await;
    cluster
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "fwd-e2e-token",
            "-n",
            "default",
            &format!("--from-literal=token={TOKEN}"),
        ])
        .await;
    cluster
        .kubectl_ok(&[
            "create",
            "secret",
            "generic",
            "fwd-e2e-target",
            "-n",
            "default",
            &format!("--from-literal=url=http://127.0.0.1:{port}/tickets"),
        ])
        .await;
    cluster
        .apply(
            "fwd.yaml",
            &format!(
                "{}\n---\n{}",
                integration(
                    NAME,
                    "  - name: tickets\n    urlFrom: {secretRef: {name: fwd-e2e-target, key: url}}\n    send: [delivery]\n    retry: {schedule: [4s]}\n",
                ),
                integration(
                    SSRF_NAME,
                    &format!(
                        "  - {{name: by-ip, url: 'http://127.0.0.1:{port}/ssrf-ip'}}\n  - {{name: by-name, url: 'http://localhost:{port}/ssrf-name'}}\n  - {{name: metadata, url: 'http://169.254.169.254/latest/meta-data/'}}\n"
                    ),
                ),
            ),
        )
        .await;

    let _controller = start_controller(&cluster, &ids);
    let loopback = ["--forward-allow-loopback"];
    let mut replicas = [
        start_receiver_with(&cluster, &ids, 0, &loopback),
        start_receiver_with(&cluster, &ids, 1, &loopback),
    ];
    // The integration as stored: on the emulator straight from storage (not counted), on a
    // real cluster through the API (a blocking read, as the checks below are synchronous).
    let stored = |name: &str| {
        match emu {
            Some(emu) => emu.object("webhookintegrations.hookwarden.dev", "default", name),
            None => tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(cluster.get(
                    &whi_resource(),
                    "default",
                    name,
                ))
            }),
        }
        .unwrap_or(Value::Null)
    };
    let logs = || {
        format!(
            "{}--- {NAME} status ---\n{:#}\n--- {SSRF_NAME} status ---\n{:#}\n--- target saw ---\n{}",
            all_logs(&cluster),
            stored(NAME)["status"],
            stored(SSRF_NAME)["status"],
            target.summary()
        )
    };
    wait_for("ForwardReady=True and a path", STEP, &logs, || async {
        let o = stored(NAME);
        condition(&o, "ForwardReady").as_deref() == Some("True")
            && o["status"]["path"].is_string()
            && stored(SSRF_NAME)["status"]["path"].is_string()
    })
    .await;
    let path = stored(NAME)["status"]["path"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let url = |r: &Receiver| format!("http://127.0.0.1:{}{path}", r.port);
    // The key the target verifies with, read through the API as its owner would.
    let forward_secret = cluster
        .get(&secret_resource(), "default", &format!("{NAME}-forward"))
        .await
        .expect("the generated <name>-forward Secret");
    let key = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(
                forward_secret["data"]["tickets"]
                    .as_str()
                    .unwrap_or_default(),
            )
            .expect("base64"),
    )
    .expect("utf-8");
    assert!(key.starts_with("whsec_"), "a Standard Webhooks key");
    let tickets = || forwarding(&stored(NAME), "tickets");

    // 1. One delivery to each receiver: each forwards what it accepted, signed with the
    // generated key; the status sums both replicas' deliveries.
    deliver(&url(&replicas[0]), "d-0", &logs).await;
    deliver(&url(&replicas[1]), "d-1", &logs).await;
    wait_for(
        "both forwards delivered, summed on the status",
        STEP,
        &logs,
        || async { count(&tickets(), "delivered") == 2 && count(&tickets(), "pending") == 0 },
    )
    .await;
    {
        let seen = target.seen.lock().expect("lock");
        assert_eq!(seen.len(), 2, "{}", target.summary());
        for s in seen.iter() {
            assert_eq!(s.path, "/tickets");
            assert_signed(s, &key);
        }
    }
    eprintln!(
        "[{:?}] 1. two receivers forwarded, status delivered 2",
        started.elapsed()
    );

    // 2. A 503 is retried on the schedule (4 s); receiver-0 is killed with the retry
    // pending and restarted on its journal: the forward goes out then, same webhook-id.
    target.answer_next(&[503]);
    deliver(&url(&replicas[0]), "d-2", &logs).await;
    wait_for("the refused attempt on the status", STEP, &logs, || async {
        count(&tickets(), "failed") == 1
            && count(&tickets(), "pending") == 1
            && tickets()["lastFailure"]
                .as_str()
                .is_some_and(|f| f.contains("503"))
    })
    .await;
    let before_kill = target.attempts_of("d-2");
    assert_eq!(before_kill.len(), 1, "{}", target.summary());
    replicas[0]
        .process
        .child
        .kill()
        .expect("kill -9 receiver-0");
    let _ = replicas[0].process.child.wait();
    assert_eq!(
        target.attempts_of("d-2").len(),
        1,
        "the retry was still pending at the kill"
    );
    replicas[0] = start_receiver_with(&cluster, &ids, 0, &loopback);
    wait_for(
        "the pending forward delivered after the restart",
        STEP,
        &logs,
        || async { count(&tickets(), "delivered") == 3 && count(&tickets(), "pending") == 0 },
    )
    .await;
    let attempts = target.attempts_of("d-2");
    assert_eq!(attempts.len(), 2, "{}", target.summary());
    assert_eq!(
        attempts[0], attempts[1],
        "the same webhook-id after kill -9"
    );
    eprintln!(
        "[{:?}] 2. 503 retried after kill -9 and restart, same webhook-id",
        started.elapsed()
    );

    // 3. A terminal answer (410) dead-letters at once; the replay annotation re-queues it.
    target.answer_next(&[410]);
    deliver(&url(&replicas[1]), "d-3", &logs).await;
    wait_for("a dead letter", STEP, &logs, || async {
        let t = tickets();
        count(&t, "deadLettered") == 1
            && t["lastFailure"].as_str().is_some_and(|f| f.contains("410"))
    })
    .await;
    cluster
        .kubectl_ok(&[
            "annotate",
            "whi",
            NAME,
            "-n",
            "default",
            "hookwarden.dev/replay=1",
            "--overwrite",
        ])
        .await;
    wait_for(
        "the dead letter replayed by annotation",
        STEP,
        &logs,
        || async { count(&tickets(), "deadLettered") == 0 && count(&tickets(), "delivered") == 4 },
    )
    .await;
    let attempts = target.attempts_of("d-3");
    assert_eq!(attempts.len(), 2, "{}", target.summary());
    assert_eq!(attempts[0], attempts[1], "a replay keeps the webhook-id");
    eprintln!(
        "[{:?}] 3. 410 dead-lettered, replayed by annotation",
        started.elapsed()
    );

    // 4. Again, replayed with `hookwarden replay` through a kubeconfig.
    target.answer_next(&[410]);
    deliver(&url(&replicas[0]), "d-4", &logs).await;
    wait_for("a second dead letter", STEP, &logs, || async {
        count(&tickets(), "deadLettered") == 1
    })
    .await;
    let mut replay = Command::new(env!("CARGO_BIN_EXE_hookwarden"));
    replay
        .args(["replay", NAME, "-n", "default"])
        .env("KUBECONFIG", cluster.path("admin.kubeconfig"));
    let out = tokio::task::spawn_blocking(move || replay.output())
        .await
        .expect("join")
        .expect("run hookwarden replay");
    assert!(out.status.success(), "hookwarden replay: {out:?}");
    wait_for(
        "the dead letter replayed by the CLI",
        STEP,
        &logs,
        || async { count(&tickets(), "deadLettered") == 0 && count(&tickets(), "delivered") == 5 },
    )
    .await;
    let attempts = target.attempts_of("d-4");
    assert_eq!(attempts.len(), 2, "{}", target.summary());
    assert_eq!(attempts[0], attempts[1], "a replay keeps the webhook-id");
    let uid = stored(NAME)["metadata"]["uid"].clone();
    let replayed = || {
        let events = match emu {
            Some(emu) => emu.objects("events"),
            None => tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(cluster.list(
                    &event_resource(),
                    "default",
                    "",
                ))
            }),
        };
        events
            .into_iter()
            .filter(|e| e["reason"] == "ForwardReplayed" && e["involvedObject"]["uid"] == uid)
            .map(|e| {
                e["note"]
                    .as_str()
                    .or(e["message"].as_str())
                    .unwrap_or_default()
                    .to_string()
            })
            .collect::<Vec<_>>()
    };
    wait_for(
        "ForwardReplayed Events for both requests",
        STEP,
        &logs,
        || async {
            replayed()
                .iter()
                .filter(|m| m.contains("replayed 1 dead letters"))
                .count()
                >= 2
        },
    )
    .await;
    eprintln!(
        "[{:?}] 4. replayed by `hookwarden replay`; ForwardReplayed Events: {:?}",
        started.elapsed(),
        replayed()
    );

    // 5. SSRF: a receiver without --forward-allow-loopback refuses loopback by address
    // and by name, and cloud metadata; dead letters, and the target sees no connection.
    let guarded = start_receiver_with(&cluster, &ids, 2, &[]);
    let ssrf_path = stored(SSRF_NAME)["status"]["path"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let connections = target.connections.load(Ordering::SeqCst);
    deliver(
        &format!("http://127.0.0.1:{}{ssrf_path}", guarded.port),
        "s-0",
        &logs,
    )
    .await;
    wait_for(
        "three refused targets dead-lettered",
        STEP,
        &logs,
        || async {
            let o = stored(SSRF_NAME);
            ["by-ip", "by-name", "metadata"].iter().all(|t| {
                let f = forwarding(&o, t);
                count(&f, "deadLettered") == 1
                    && f["lastFailure"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("refused: "))
            })
        },
    )
    .await;
    let o = stored(SSRF_NAME);
    for (t, why) in [
        ("by-ip", "is a loopback address"),
        ("by-name", "is a loopback address"),
        ("metadata", "169.254.169.254 is link-local (cloud metadata)"),
    ] {
        let failure = forwarding(&o, t)["lastFailure"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(failure.contains(why), "{t}: {failure}");
    }
    assert_eq!(
        target.connections.load(Ordering::SeqCst),
        connections,
        "a refused target is never connected to"
    );
    assert!(!target.summary().contains("/ssrf-"), "{}", target.summary());
    eprintln!(
        "[{:?}] 5. refused: {:?}",
        started.elapsed(),
        ["by-ip", "by-name", "metadata"].map(|t| forwarding(&o, t)["lastFailure"].clone())
    );

    // 6. Issue 17: dead letters on both receivers at once. Each replica writes its own
    // share (status.replicas), and status.forwarding sums them: 2, not the last
    // writer's 1. `kubectl get whi -o wide` shows the total.
    target.answer_next(&[410, 410]);
    deliver(&url(&replicas[0]), "d-5", &logs).await;
    deliver(&url(&replicas[1]), "d-6", &logs).await;
    wait_for(
        "both replicas' dead letters summed",
        STEP,
        &logs,
        || async {
            let o = stored(NAME);
            let shares = o["status"]["replicas"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            count(&tickets(), "deadLettered") == 2
                && o["status"]["forwardingTotals"]["deadLettered"] == 2
                && shares.len() == 2
                && shares
                    .iter()
                    .all(|r| r["forwarding"][0]["deadLettered"] == 1)
        },
    )
    .await;
    let wide = cluster
        .kubectl_ok(&["get", "whi", NAME, "-n", "default", "-o", "wide"])
        .await;
    let header: Vec<&str> = wide
        .lines()
        .next()
        .unwrap_or_default()
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    let row: Vec<&str> = wide
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let column = header
        .iter()
        .position(|h| *h == "DEAD LETTERS")
        .expect("a DEAD LETTERS column");
    assert_eq!(row.get(column), Some(&"2"), "{wide}");
    eprintln!(
        "[{:?}] 6. dead letters on two replicas summed: {}",
        started.elapsed(),
        wide.trim()
    );

    // At least once, but not more than that without a reason: the forward that went
    // out after the restart was not sent again when the replayed journal entry was
    // imported (receiver-0 folded d-4 since, which imports whatever waits).
    assert_eq!(target.attempts_of("d-2").len(), 2, "{}", target.summary());

    // The receivers needed nothing beyond the chart's RBAC.
    if let Some(emu) = emu {
        let denied: Vec<_> = emu
            .requests()
            .into_iter()
            .filter(|r| {
                (r.caller == ids.receiver_caller || r.caller == ids.controller_caller)
                    && r.code == Some(403)
            })
            .collect();
        assert!(denied.is_empty(), "the chart's RBAC refused: {denied:?}");
    }
    assert!(
        !all_logs(&cluster).contains("panicked"),
        "{}",
        all_logs(&cluster)
    );
    drop(guarded);
    // Leave a real cluster as found (the controller still runs to remove the finalizers).
    cluster
        .kubectl_ok(&[
            "delete",
            "whi",
            NAME,
            SSRF_NAME,
            "-n",
            "default",
            "--wait=true",
        ])
        .await;
}
