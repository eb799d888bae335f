//! The forwarder's sender against real sockets: servers on 127.0.0.1 started by each
//! test (hand-written HTTP/1.1, so a test can hang, stream forever, redirect or count
//! connections), every test bounded in time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hookwarden::domain::forward::{Attempt, Outcome, TransportFailure};
use hookwarden::forwarder::{
    AttemptResult, EgressPolicy, RefusalRule, Request, Sender, SenderOptions, TrustRoots,
};
use http::{HeaderMap, HeaderValue};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Every test finishes well within this, or fails.
const BOUND: Duration = Duration::from_secs(20);

// A throwaway CA and a `localhost`/`127.0.0.1` certificate it signed (100-year validity,
// generated with openssl for these tests only; the key protects nothing).
const TEST_CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBoTCCAUegAwIBAgIUKvKrLlz7CBIHIUG+rWiI50cXkS8wCgYIKoZIzj0EAwIw
HTEbMBkGA1UEAwwSaG9va3dhcmRlbi10ZXN0LWNhMCAXDTI2MTIwNzA1MDYzM1oY
DzIxMjYxMTEzMDUwNjMzWjAdMRswGQYDVQQDDBJob29rd2FyZGVuLXRlc3QtY2Ew
WTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAARax1T8dOy9UFprIiVvusP7F0CFAoiS
eX0rPo73iqi+XqLL9n9wEmho1hHV9n1f1u02OM2VhWAMPg7ZHKfMLo+co2MwYTAd
BgNVHQ4EFgQUEQQzztCysqBemRpsser3yugG5j0wHwYDVR0jBBgwFoAUEQQzztCy
sqBemRpsser3yugG5j0wDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAQYw
CgYIKoZIzj0EAwIDSAAwRQIgAKcy+97pHcs/ybYiVADHAdDK10FE4kyxiTyvH4YX
WtICIQDp1EGAR9rcsogK15oJ0RsHaaWDuVkpPN45+XKcx+sucg==
-----END CERTIFICATE-----";
const TEST_LEAF_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBxzCCAW6gAwIBAgIUI3uBgTphQQCNbqtKSZZSdZ8onuYwCgYIKoZIzj0EAwIw
HTEbMBkGA1UEAwwSaG9va3dhcmRlbi10ZXN0LWNhMCAXDTI2MTIwNzA1MDYzM1oY
DzIxMjYxMTEzMDUwNjMzWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjO
PQIBBggqhkjOPQMBBwNCAAT1QRPn5RXFixJcKLkfGikoGCzwRXjMwp6P5qrdjSEx
fAjuxji4lh7H8SNtHwAUJy+IDpomaEY3AHopyMp+l2Lpo4GSMIGPMBoGA1UdEQQT
MBGCCWxvY2FsaG9zdIcEfwAAATAMBgNVHRMBAf8EAjAAMA4GA1UdDwEB/wQEAwIH
gDATBgNVHSUEDDAKBggrBgEFBQcDATAdBgNVHQ4EFgQUVmmrJ7G5KwdwOkbD/Xio
uWUFghkwHwYDVR0jBBgwFoAUEQQzztCysqBemRpsser3yugG5j0wCgYIKoZIzj0E
AwIDRwAwRAIgRgW7Ui26b5L13E6klJfxHm5GxBXinvQ5O9uXtQ2Q/nMCIBkPAwOd
sLcSqQJIugGjNgWxShK7g8nNd5Sj+xSC5O6S
-----END CERTIFICATE-----";
const TEST_LEAF_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgKSvkR+w9T/7nsVBB
pgJTx4HgurDqyiVhIwqWolZcgl6hRANCAAT1QRPn5RXFixJcKLkfGikoGCzwRXjM
wp6P5qrdjSExfAjuxji4lh7H8SNtHwAUJy+IDpomaEY3AHopyMp+l2Lp
-----END PRIVATE KEY-----";

#[derive(Clone, Copy)]
enum Reply {
    /// Write this whole response, then close.
    Canned(&'static str),
    /// Read the request and never answer.
    Hang,
    /// A 200 announcing 50 MB, then zeros for as long as the client reads.
    Huge,
    /// A chunked 200 whose chunks never end.
    Endless,
    /// A 200 after 50 ms to every request, the connection kept open.
    KeepAlive,
}

struct TestServer {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    /// The last request's head and body, as received.
    last_request: Arc<std::sync::Mutex<String>>,
}

impl TestServer {
    fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.addr.port())
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

async fn serve(reply: Reply) -> TestServer {
    serve_with(reply, None).await
}

/// A server on 127.0.0.1:0; with `tls`, HTTPS with the test certificate.
async fn serve_with(reply: Reply, tls: Option<tokio_rustls::TlsAcceptor>) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let last_request = Arc::new(std::sync::Mutex::new(String::new()));
    let (count, last) = (connections.clone(), last_request.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let (tls, last) = (tls.clone(), last.clone());
            tokio::spawn(async move {
                match tls {
                    None => answer(tcp, reply, last).await,
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(tcp).await {
                            answer(stream, reply, last).await;
                        }
                    }
                }
            });
        }
    });
    TestServer {
        addr,
        connections,
        last_request,
    }
}

async fn answer<S>(mut stream: S, reply: Reply, last: Arc<std::sync::Mutex<String>>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Some(request) = read_request(&mut stream).await else {
        return;
    };
    *last.lock().expect("lock") = request;
    match reply {
        Reply::Canned(response) => {
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Reply::KeepAlive => loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            if stream.write_all(ok.as_bytes()).await.is_err()
                || read_request(&mut stream).await.is_none()
            {
                return;
            }
        },
        Reply::Huge => {
            let head = "HTTP/1.1 200 OK\r\nContent-Length: 52428800\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let zeros = [0u8; 16 * 1024];
            while stream.write_all(&zeros).await.is_ok() {}
        }
        Reply::Endless => {
            let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000));
            while stream.write_all(chunk.as_bytes()).await.is_ok() {}
        }
    }
}

/// The request head and a Content-Length body, as text.
async fn read_request<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1024];
    loop {
        let n = stream.read(&mut byte).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&byte[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return Some(text);
            }
        }
    }
}

fn request(url: &str, body: &'static [u8]) -> Request {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("webhook-id", HeaderValue::from_static("evt_1"));
    Request {
        url: url.parse().expect("url"),
        headers,
        body: Bytes::from_static(body),
    }
}

fn standalone() -> Sender {
    Sender::new(
        EgressPolicy::standalone(vec![], None),
        SenderOptions::default(),
    )
    .expect("sender")
}

fn cluster() -> Sender {
    Sender::new(
        EgressPolicy::cluster(vec![], None),
        SenderOptions::default(),
    )
    .expect("sender")
}

async fn send(sender: &Sender, url: &str, timeout: Duration) -> AttemptResult {
    tokio::time::timeout(BOUND, sender.send(request(url, br#"{"a":1}"#), timeout))
        .await
        .expect("the attempt ends within the test bound")
}

fn outcome(r: &AttemptResult) -> (Outcome, &'static str) {
    (r.classification.outcome, r.classification.reason)
}

#[tokio::test]
async fn a_2xx_is_delivered_with_the_request_as_built() {
    let server = serve(Reply::Canned("HTTP/1.1 204 No Content\r\n\r\n")).await;
    let r = send(
        &standalone(),
        &server.url("127.0.0.1", "/in?x=1"),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(r.attempt, Attempt::Status(204));
    assert_eq!(outcome(&r), (Outcome::Delivered, "delivered"));
    let seen = server.last_request.lock().expect("lock").clone();
    assert!(seen.starts_with("POST /in?x=1 HTTP/1.1\r\n"), "{seen}");
    assert!(
        seen.to_ascii_lowercase().contains("webhook-id: evt_1"),
        "{seen}"
    );
    assert!(seen.ends_with(r#"{"a":1}"#), "{seen}");
}

/// The pool keeps as many idle connections to a host as the receiver lets attempts run
/// to one target at once (32): a second burst of 32 concurrent sends reuses the first
/// burst's connections instead of closing all but 8 of them and connecting again.
#[tokio::test]
async fn a_burst_of_concurrent_sends_reuses_its_connections() {
    let server = serve(Reply::KeepAlive).await;
    let sender = standalone();
    let url = server.url("127.0.0.1", "/in");
    for _ in 0..2 {
        let results = futures::future::join_all((0..32).map(|_| send(&sender, &url, BOUND))).await;
        for r in &results {
            assert_eq!(outcome(r).0, Outcome::Delivered, "{r:?}");
        }
    }
    assert!(
        server.connections() <= 32,
        "{} connections for two bursts of 32",
        server.connections()
    );
}

#[tokio::test]
async fn server_errors_are_retried_and_gone_is_terminal() {
    let sender = standalone();
    let s500 = serve(Reply::Canned(
        "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops",
    ))
    .await;
    let r = send(&sender, &s500.url("127.0.0.1", "/"), Duration::from_secs(5)).await;
    assert_eq!(outcome(&r), (Outcome::Retryable, "server_error"));
    assert_eq!(r.detail, "HTTP 500 (server_error)");

    let s410 = serve(Reply::Canned(
        "HTTP/1.1 410 Gone\r\nContent-Length: 0\r\n\r\n",
    ))
    .await;
    let r = send(&sender, &s410.url("127.0.0.1", "/"), Duration::from_secs(5)).await;
    assert_eq!(outcome(&r), (Outcome::Terminal, "gone"));
}

#[tokio::test]
async fn a_429_brings_its_retry_after() {
    let server = serve(Reply::Canned(
        "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 120\r\nContent-Length: 0\r\n\r\n",
    ))
    .await;
    let r = send(
        &standalone(),
        &server.url("127.0.0.1", "/"),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(outcome(&r), (Outcome::Retryable, "rate_limited"));
    assert_eq!(r.retry_after, Some(Duration::from_secs(120)));
}

#[tokio::test]
async fn a_target_that_hangs_times_out_on_time() {
    let server = serve(Reply::Hang).await;
    let timeout = Duration::from_millis(500);
    let r = send(&standalone(), &server.url("127.0.0.1", "/"), timeout).await;
    assert_eq!(r.attempt, Attempt::Failed(TransportFailure::Timeout));
    assert_eq!(outcome(&r), (Outcome::Retryable, "timeout"));
    assert!(
        r.elapsed >= timeout && r.elapsed < Duration::from_secs(2),
        "{:?}",
        r.elapsed
    );
}

#[tokio::test]
async fn huge_and_endless_answers_are_read_a_few_kib_and_dropped() {
    let sender = standalone();
    for reply in [Reply::Huge, Reply::Endless] {
        let server = serve(reply).await;
        let r = send(
            &sender,
            &server.url("127.0.0.1", "/"),
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(outcome(&r), (Outcome::Delivered, "delivered"));
        // Far below the 10 s timeout: the sender stops reading after 4 KiB.
        assert!(r.elapsed < Duration::from_secs(2), "{:?}", r.elapsed);
    }
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let elsewhere = serve(Reply::Canned(
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ))
    .await;
    let response: &'static str = Box::leak(
        format!(
            "HTTP/1.1 302 Found\r\nLocation: {}\r\nContent-Length: 0\r\n\r\n",
            elsewhere.url("127.0.0.1", "/")
        )
        .into_boxed_str(),
    );
    let server = serve(Reply::Canned(response)).await;
    let r = send(
        &standalone(),
        &server.url("127.0.0.1", "/"),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(r.attempt, Attempt::Status(302));
    assert_eq!(outcome(&r), (Outcome::Retryable, "redirect_not_followed"));
    assert_eq!(elsewhere.connections(), 0, "the Location was never visited");
}

#[tokio::test]
async fn refused_connections_silent_closes_and_garbage_answers_are_retried() {
    let sender = standalone();
    // A port that was free a moment ago.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let r = send(
        &sender,
        &format!("http://127.0.0.1:{port}/"),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(outcome(&r), (Outcome::Retryable, "connect_error"));

    // Read the request, close without a word.
    let server = serve(Reply::Canned("")).await;
    let r = send(
        &sender,
        &server.url("127.0.0.1", "/"),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        outcome(&r),
        (Outcome::Retryable, "connection_reset"),
        "{}",
        r.detail
    );

    let server = serve(Reply::Canned("SSH-2.0-OpenSSH_9.6\r\n\r\n")).await;
    let r = send(
        &sender,
        &server.url("127.0.0.1", "/"),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(outcome(&r), (Outcome::Retryable, "protocol_error"));
}

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    let chain = vec![
        CertificateDer::from_pem_slice(TEST_LEAF_PEM.as_bytes()).expect("leaf"),
        CertificateDer::from_pem_slice(TEST_CA_PEM.as_bytes()).expect("ca"),
    ];
    let key = PrivateKeyDer::from_pem_slice(TEST_LEAF_KEY_PEM.as_bytes()).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server config");
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_tls_error_and_a_trusted_one_works() {
    let server = serve_with(
        Reply::Canned("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        Some(tls_acceptor()),
    )
    .await;
    let url = format!("https://localhost:{}/in", server.addr.port());

    let system = standalone();
    assert_ne!(system.roots(), TrustRoots::Custom);
    let r = send(&system, &url, Duration::from_secs(5)).await;
    assert_eq!(r.attempt, Attempt::Failed(TransportFailure::Tls));
    assert_eq!(outcome(&r), (Outcome::Retryable, "tls_error"));
    assert!(
        r.detail.starts_with("TLS error: invalid peer certificate"),
        "{}",
        r.detail
    );

    // The same server through a sender that trusts the test CA: the TLS path itself works.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(TEST_CA_PEM.as_bytes()).expect("ca"))
        .expect("add CA");
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let trusting = Sender::with_tls_config(
        EgressPolicy::standalone(vec![], None),
        SenderOptions::default(),
        tls,
    );
    let r = send(&trusting, &url, Duration::from_secs(5)).await;
    assert_eq!(
        outcome(&r),
        (Outcome::Delivered, "delivered"),
        "{}",
        r.detail
    );
}

#[tokio::test]
async fn cluster_mode_refuses_loopback_by_address_and_by_name_without_connecting() {
    let server = serve(Reply::Canned(
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ))
    .await;
    let sender = cluster();
    for host in ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"] {
        let r = send(&sender, &server.url(host, "/"), Duration::from_secs(5)).await;
        assert_eq!(
            r.attempt,
            Attempt::Failed(TransportFailure::RefusedByPolicy),
            "{host}: {}",
            r.detail
        );
        assert_eq!(outcome(&r), (Outcome::Terminal, "refused_by_policy"));
        let refusal = r.refusal.expect("refusal");
        assert_eq!(refusal.rule, RefusalRule::Loopback, "{host}");
        assert!(r.detail.starts_with("refused: "), "{}", r.detail);
        assert!(r.detail.contains("loopback"), "{}", r.detail);
    }
    // Over TLS too: the guard runs before the handshake.
    let r = send(
        &sender,
        &format!("https://localhost:{}/", server.addr.port()),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(outcome(&r), (Outcome::Terminal, "refused_by_policy"));
    assert_eq!(server.connections(), 0, "the target never saw a connection");
}

#[tokio::test]
async fn the_metadata_endpoint_is_refused_before_any_connect() {
    let sender = cluster();
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "https://169.254.169.254/",
    ] {
        let r = send(&sender, url, Duration::from_secs(5)).await;
        assert_eq!(
            outcome(&r),
            (Outcome::Terminal, "refused_by_policy"),
            "{url}"
        );
        // The mapped form is named as written, and judged by the address it reaches.
        assert!(
            r.detail.starts_with("refused: ")
                && r.detail.ends_with(
                    "169.254.169.254 is link-local (cloud metadata); forwarding to it is not allowed"
                ),
            "{}",
            r.detail
        );
        // A connect to an unroutable address would take the connect timeout (5 s);
        // a refusal is immediate.
        assert!(
            r.elapsed < Duration::from_millis(500),
            "{url}: {:?}",
            r.elapsed
        );
    }
    // Standalone refuses it as well: only loopback is opened up there.
    let r = send(
        &standalone(),
        "http://169.254.169.254/",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(outcome(&r), (Outcome::Terminal, "refused_by_policy"));
}

#[tokio::test]
async fn standalone_allows_the_same_loopback_target_and_deny_cidrs_still_apply() {
    let server = serve(Reply::Canned(
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    ))
    .await;
    for host in ["127.0.0.1", "localhost"] {
        let r = send(
            &standalone(),
            &server.url(host, "/"),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(
            outcome(&r),
            (Outcome::Delivered, "delivered"),
            "{host}: {}",
            r.detail
        );
    }
    let seen = server.connections();
    assert!(seen >= 1);

    let denied = Sender::new(
        EgressPolicy::standalone(vec!["127.0.0.0/8".parse().expect("cidr")], None),
        SenderOptions::default(),
    )
    .expect("sender");
    let r = send(
        &denied,
        &server.url("127.0.0.1", "/"),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(outcome(&r), (Outcome::Terminal, "refused_by_policy"));
    assert!(matches!(
        r.refusal.map(|x| x.rule),
        Some(RefusalRule::Denied(_))
    ));
    assert_eq!(server.connections(), seen);
}

#[tokio::test]
async fn the_url_never_appears_in_the_result() {
    // Slack-style: the path is the credential.
    let sender = cluster();
    let r = send(
        &sender,
        "http://127.0.0.1:9/services/T000/B000/s3cr3tpath",
        Duration::from_secs(5),
    )
    .await;
    assert!(!format!("{r:?}").contains("s3cr3tpath"));
    let req = request("http://127.0.0.1:9/services/T000/B000/s3cr3tpath", b"{}");
    assert!(!format!("{req:?}").contains("s3cr3tpath"));
    let _ = TcpStream::connect("127.0.0.1:9").await;
}
