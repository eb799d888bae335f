//! `hookwarden verify`, `sign` and `send-test`: thin command-line shells around
//! [`crate::domain::signature`], the same code the receiver runs.
//!
//! Exit codes: 0 valid / sent and answered 2xx; 1 invalid / non-2xx answer or
//! connection failure; 2 usage error (unknown provider, unreadable file, malformed
//! `--header`, inconsistent settings).

use std::fmt;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::crd::ProviderKind;
use crate::crd::{
    GenericAuth, HmacAlgorithm, SignatureEncoding, SignatureSpec, WebhookIntegrationSpec,
};
use crate::domain::sample::{self, SampleOptions};
use crate::domain::signature::{self, Delivery, Scheme, SignInput, Verdict};
use crate::domain::spec;

/// Exit code for usage errors, like clap's own.
const USAGE: u8 = 2;

/// Largest response body `send-test` prints.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Settings for provider `generic` given as flags instead of `--spec`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GenericFlags {
    /// generic: header carrying the signature (spec.signature.header).
    #[arg(long, value_name = "NAME")]
    pub signature_header: Option<String>,
    /// generic: sha1, sha256 or sha512.
    #[arg(long, value_name = "ALG", value_parser = parse_algorithm)]
    pub algorithm: Option<HmacAlgorithm>,
    /// generic: hex or base64.
    #[arg(long, value_name = "ENC", value_parser = parse_encoding)]
    pub encoding: Option<SignatureEncoding>,
    /// generic: text before the signature, e.g. `sha256=`.
    #[arg(long, value_name = "TEXT")]
    pub prefix: Option<String>,
    /// generic: signed content template over {body}, {timestamp}, {id}; default {body}.
    #[arg(long, value_name = "TEMPLATE")]
    pub signed_content: Option<String>,
    /// generic: header carrying the signed Unix timestamp.
    #[arg(long, value_name = "NAME")]
    pub timestamp_header: Option<String>,
    /// generic: header carrying the delivery id.
    #[arg(long, value_name = "NAME")]
    pub id_header: Option<String>,
    /// generic: timestamp window in seconds, both directions (default 300).
    #[arg(long, value_name = "SECONDS")]
    pub tolerance_seconds: Option<i32>,
}

impl GenericFlags {
    fn is_empty(&self) -> bool {
        self.signature_header.is_none()
            && self.algorithm.is_none()
            && self.encoding.is_none()
            && self.prefix.is_none()
            && self.signed_content.is_none()
            && self.timestamp_header.is_none()
            && self.id_header.is_none()
            && self.tolerance_seconds.is_none()
    }
}

fn parse_algorithm(s: &str) -> Result<HmacAlgorithm, String> {
    serde_yaml::from_str(&s.to_ascii_lowercase())
        .map_err(|_| format!("{s:?}: expected sha1, sha256 or sha512"))
}

fn parse_encoding(s: &str) -> Result<SignatureEncoding, String> {
    serde_yaml::from_str(&s.to_ascii_lowercase())
        .map_err(|_| format!("{s:?}: expected hex or base64"))
}

fn parse_auth(s: &str) -> Result<GenericAuth, String> {
    serde_yaml::from_str(&s.to_ascii_lowercase())
        .map_err(|_| format!("{s:?}: expected hmac, oidc, bearer, basic, header or none"))
}

fn parse_provider(s: &str) -> Result<ProviderKind, String> {
    s.parse()
        .map_err(|e: crate::crd::UnknownProvider| e.to_string())
}

/// Which scheme a command uses: a preset, refined by `--spec` or flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SchemeArgs {
    /// Provider preset (github, stripe, slack, …). Optional when --spec names one.
    #[arg(long, value_name = "NAME", value_parser = parse_provider, required_unless_present = "spec")]
    pub provider: Option<ProviderKind>,
    /// A WebhookIntegration YAML (or just its spec) supplying provider, signature and
    /// tokenHeader settings.
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
    /// Token presets: extra header carrying the token (spec.tokenHeader).
    #[arg(long, value_name = "NAME")]
    pub token_header: Option<String>,
    /// generic's spec.auth: hmac (the default, spec.signature), oidc (a bearer JWT, with
    /// the OIDC flags), bearer, basic, header (with --token-header) or none.
    #[arg(long, value_name = "AUTH", value_parser = parse_auth, conflicts_with = "signature_header")]
    pub auth: Option<GenericAuth>,
    #[command(flatten)]
    pub generic: GenericFlags,
    #[command(flatten)]
    pub oidc: OidcFlags,
}

/// OIDC settings given as flags instead of `--spec` (google-pubsub, github-actions, and
/// generic with `--auth oidc`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct OidcFlags {
    /// OIDC: expected token issuer (spec.oidc.issuer; fixed by the presets).
    #[arg(long, value_name = "URL")]
    pub issuer: Option<String>,
    /// OIDC: an accepted audience (spec.oidc.audiences); repeat for several.
    #[arg(long = "audience", value_name = "AUD")]
    pub audiences: Vec<String>,
    /// OIDC: where the issuer publishes its keys (spec.oidc.jwksURL).
    #[arg(long, value_name = "URL")]
    pub jwks_url: Option<String>,
    /// OIDC: a claim the token must carry, as NAME=VALUE (spec.oidc.claims); repeat.
    #[arg(long = "claim", value_name = "NAME=VALUE")]
    pub claims: Vec<String>,
}

impl OidcFlags {
    fn is_empty(&self) -> bool {
        self.issuer.is_none()
            && self.audiences.is_empty()
            && self.jwks_url.is_none()
            && self.claims.is_empty()
    }
}

/// Asymmetric senders (OIDC, SNS): the private key that signs, for `sign`/`send-test`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PrivateKeyFlags {
    /// OIDC/SNS: PEM private key (PKCS#8 RSA, P-256 or Ed25519; or PKCS#1 RSA) that
    /// signs, instead of --secret.
    #[arg(long, value_name = "PATH")]
    pub private_key_file: Option<PathBuf>,
    /// OIDC: `kid` to put in the token header (the JWKS key id).
    #[arg(long, value_name = "KID")]
    pub key_id: Option<String>,
}

/// Flags of `hookwarden verify`.
#[derive(Clone, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub scheme: SchemeArgs,
    /// A secret to try; repeat for rotation (current, then previous). Asymmetric
    /// schemes take the public key: discord (hex), sendgrid (base64/PEM),
    /// standard-webhooks/svix `whpk_…`. OIDC: an inline JWKS (optional). SNS: none needed.
    #[arg(long = "secret", value_name = "VALUE", allow_hyphen_values = true)]
    pub secrets: Vec<String>,
    /// OIDC/SNS: a JWKS (JSON) or the signing certificate (PEM) to verify with instead
    /// of fetching the issuer's JWKS / the SigningCertURL.
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// OIDC/SNS: allow http and any host for the fetched keys (tests only).
    #[arg(long)]
    pub insecure_key_urls: bool,
    /// The raw body exactly as received (`-` for stdin).
    #[arg(long, value_name = "PATH")]
    pub body_file: PathBuf,
    /// A request header as `Name: value`; repeat for each header.
    #[arg(
        long = "header",
        value_name = "'Name: value'",
        allow_hyphen_values = true
    )]
    pub headers: Vec<String>,
    /// The full URL the sender called, query included (Twilio signs it).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// HTTP method of the delivery.
    #[arg(long, default_value = "POST")]
    pub method: String,
    /// Judge timestamps at this Unix time (seconds) instead of the clock.
    #[arg(long, value_name = "UNIX_SECONDS", allow_negative_numbers = true)]
    pub now: Option<i64>,
}

impl fmt::Debug for VerifyArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyArgs")
            .field("scheme", &self.scheme)
            .field(
                "secrets",
                &format_args!("<{} redacted>", self.secrets.len()),
            )
            .field("body_file", &self.body_file)
            .field("headers", &self.headers.len())
            .field("url", &self.url)
            .field("method", &self.method)
            .field("now", &self.now)
            .finish()
    }
}

/// Flags of `hookwarden sign`.
#[derive(Clone, clap::Args)]
pub struct SignArgs {
    #[command(flatten)]
    pub scheme: SchemeArgs,
    /// The shared secret or token. Asymmetric schemes take the private key: discord
    /// (hex seed), sendgrid (PKCS#8 PEM or base64 DER), standard-webhooks/svix `whsk_…`
    /// (OIDC/SNS: --private-key-file instead).
    #[arg(
        long,
        value_name = "VALUE",
        allow_hyphen_values = true,
        required_unless_present = "private_key_file",
        default_value = ""
    )]
    pub secret: String,
    #[command(flatten)]
    pub key: PrivateKeyFlags,
    /// The body to sign (`-` for stdin).
    #[arg(long, value_name = "PATH")]
    pub body_file: PathBuf,
    /// Unix seconds to sign with (default: now).
    #[arg(long, value_name = "UNIX_SECONDS", allow_negative_numbers = true)]
    pub timestamp: Option<i64>,
    /// Delivery id to sign or send (default: a random msg_… id).
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// URL the delivery is sent to (Twilio signs it).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Content type of the body (default: application/json; Twilio and Slack: form
    /// unless the body looks like JSON).
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
}

impl fmt::Debug for SignArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignArgs")
            .field("scheme", &self.scheme)
            .field("secret", &"<redacted>")
            .field("body_file", &self.body_file)
            .field("timestamp", &self.timestamp)
            .field("id", &self.id)
            .field("url", &self.url)
            .field("content_type", &self.content_type)
            .finish()
    }
}

/// Flags of `hookwarden send-test`.
#[derive(Clone, clap::Args)]
pub struct SendTestArgs {
    /// Endpoint URL (http or https), e.g. the integration's status.url.
    pub url: String,
    #[command(flatten)]
    pub scheme: SchemeArgs,
    /// The shared secret or token the integration expects; for asymmetric schemes the
    /// sender's private key (as for `sign`; OIDC/SNS: --private-key-file instead).
    #[arg(
        long,
        value_name = "VALUE",
        allow_hyphen_values = true,
        required_unless_present = "private_key_file",
        default_value = ""
    )]
    pub secret: String,
    #[command(flatten)]
    pub key: PrivateKeyFlags,
    /// Monitoring providers: send the recovery of the incident instead of its trigger.
    #[arg(long)]
    pub resolve: bool,
    /// The sender's incident id (default hookwarden-send-test), so a trigger and a
    /// --resolve hit the same incident.
    #[arg(long, value_name = "ID")]
    pub incident_id: Option<String>,
    /// Delivery id (default: random). Datadog's delivery key also holds the sample's `date`
    /// (the second it is sent), so to send one delivery again byte for byte, use --body-file.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Send this body (JSON) instead of the provider's sample.
    #[arg(long, value_name = "PATH")]
    pub body_file: Option<PathBuf>,
    /// Give up after this many seconds (connect + answer).
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub timeout_seconds: u64,
}

impl fmt::Debug for SendTestArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendTestArgs")
            .field("url", &self.url)
            .field("scheme", &self.scheme)
            .field("secret", &"<redacted>")
            .field("resolve", &self.resolve)
            .field("incident_id", &self.incident_id)
            .field("id", &self.id)
            .field("body_file", &self.body_file)
            .field("timeout_seconds", &self.timeout_seconds)
            .finish()
    }
}

/// Why a command stopped before its answer: a usage error (bad flags, unreadable file:
/// exit 2), or the thing it was asked about is itself invalid (a spec the receivers would
/// refuse: exit 1, like a delivery that does not verify).
#[derive(Debug)]
pub(crate) enum CliError {
    Usage(String),
    Invalid(String),
}

pub(crate) fn usage_exit(e: CliError) -> ExitCode {
    match e {
        CliError::Usage(message) => {
            eprintln!("error: {message}");
            ExitCode::from(USAGE)
        }
        CliError::Invalid(message) => {
            eprintln!("invalid: {message}");
            ExitCode::from(1)
        }
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn read_body(path: &Path) -> Result<Vec<u8>, CliError> {
    if path.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| CliError::Usage(format!("cannot read the body from stdin: {e}")))?;
        return Ok(buf);
    }
    std::fs::read(path)
        .map_err(|e| CliError::Usage(format!("cannot read --body-file {}: {e}", path.display())))
}

/// The spec inside a WebhookIntegration YAML file (first WebhookIntegration document),
/// or a file holding just a spec.
fn load_spec(path: &Path) -> Result<WebhookIntegrationSpec, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Usage(format!("cannot read --spec {}: {e}", path.display())))?;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))?;
        let spec = match value.get("kind").and_then(|k| k.as_str()) {
            Some("WebhookIntegration") => value.get("spec").cloned(),
            Some(_) => None,
            None if value.get("provider").is_some() => Some(value),
            None => None,
        };
        if let Some(spec) = spec {
            return serde_yaml::from_value(spec)
                .map_err(|e| CliError::Usage(format!("{}: invalid spec: {e}", path.display())));
        }
    }
    Err(CliError::Usage(format!(
        "{}: no WebhookIntegration document found",
        path.display()
    )))
}

use serde::Deserialize as _;

fn build_scheme(args: &SchemeArgs) -> Result<Scheme, CliError> {
    let mut spec = match &args.spec {
        Some(path) => {
            let spec = load_spec(path)?;
            if let Some(p) = args.provider
                && p != spec.provider
            {
                return Err(CliError::Usage(format!(
                    "--provider {p} contradicts provider {} in {}",
                    spec.provider,
                    path.display()
                )));
            }
            spec
        }
        None => {
            let provider = args
                .provider
                .ok_or_else(|| CliError::Usage("--provider is required".to_string()))?;
            serde_yaml::from_str::<WebhookIntegrationSpec>(&format!("provider: {provider}"))
                .map_err(|e| CliError::Usage(e.to_string()))?
        }
    };
    if let Some(h) = &args.token_header {
        spec.token_header = Some(h.clone());
    }
    if let Some(auth) = args.auth {
        if spec.provider != ProviderKind::Generic {
            return Err(CliError::Usage(
                "--auth only applies to --provider generic".to_string(),
            ));
        }
        spec.auth = Some(auth);
        if auth != GenericAuth::Hmac {
            spec.signature = None;
        }
    }
    if !args.generic.is_empty() {
        if spec.provider != ProviderKind::Generic {
            return Err(CliError::Usage(
                "--signature-header, --algorithm, … only apply to --provider generic".to_string(),
            ));
        }
        let g = &args.generic;
        let base = spec.signature.take();
        let header = g
            .signature_header
            .clone()
            .or_else(|| base.as_ref().map(|b| b.header.clone()))
            .ok_or_else(|| {
                CliError::Usage("provider generic needs --signature-header".to_string())
            })?;
        spec.signature = Some(Box::new(SignatureSpec {
            header,
            algorithm: g
                .algorithm
                .or(base.as_ref().map(|b| b.algorithm))
                .unwrap_or(HmacAlgorithm::Sha256),
            encoding: g
                .encoding
                .or(base.as_ref().map(|b| b.encoding))
                .unwrap_or(SignatureEncoding::Hex),
            prefix: g
                .prefix
                .clone()
                .or_else(|| base.as_ref().map(|b| b.prefix.clone()))
                .unwrap_or_default(),
            signed_content: g
                .signed_content
                .clone()
                .or_else(|| base.as_ref().map(|b| b.signed_content.clone()))
                .unwrap_or_else(|| "{body}".to_string()),
            timestamp_header: g
                .timestamp_header
                .clone()
                .or_else(|| base.as_ref().and_then(|b| b.timestamp_header.clone())),
            id_header: g
                .id_header
                .clone()
                .or_else(|| base.as_ref().and_then(|b| b.id_header.clone())),
            tolerance_seconds: g
                .tolerance_seconds
                .or_else(|| base.as_ref().and_then(|b| b.tolerance_seconds)),
        }));
    }
    if !args.oidc.is_empty() {
        let o = &args.oidc;
        let mut oidc = spec.oidc.take().unwrap_or_default();
        if o.issuer.is_some() {
            oidc.issuer = o.issuer.clone();
        }
        if !o.audiences.is_empty() {
            oidc.audiences = o.audiences.clone();
        }
        if o.jwks_url.is_some() {
            oidc.jwks_url = o.jwks_url.clone();
        }
        for claim in &o.claims {
            let (name, value) = claim.split_once('=').ok_or_else(|| {
                CliError::Usage(format!("--claim {claim:?} is not of the form NAME=VALUE"))
            })?;
            oidc.claims.insert(name.to_string(), value.to_string());
        }
        spec.oidc = Some(oidc);
    }
    // The receivers' resolver: a spec they would refuse is refused here the same way.
    scheme_of(&spec).map_err(CliError::Invalid)
}

fn parse_headers(raw: &[String]) -> Result<HeaderMap, CliError> {
    let mut map = HeaderMap::new();
    for h in raw {
        let (name, value) = h.split_once(':').ok_or_else(|| {
            CliError::Usage(format!("--header {h:?} is not of the form 'Name: value'"))
        })?;
        let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
            CliError::Usage(format!(
                "--header {h:?}: {:?} is not a valid header name",
                name.trim()
            ))
        })?;
        let value = HeaderValue::from_bytes(value.trim().as_bytes()).map_err(|_| {
            CliError::Usage(format!(
                "--header {:?}: the value is not a valid header value",
                name.as_str()
            ))
        })?;
        map.append(name, value);
    }
    Ok(map)
}

/// `hookwarden verify`.
pub fn verify(args: VerifyArgs) -> ExitCode {
    match run_verify(&args) {
        Ok(code) => code,
        Err(e) => usage_exit(e),
    }
}

fn run_verify(args: &VerifyArgs) -> Result<ExitCode, CliError> {
    let scheme = build_scheme(&args.scheme)?;
    let body = read_body(&args.body_file)?;
    let headers = parse_headers(&args.headers)?;
    let url = args.url.as_deref().unwrap_or("");
    if scheme.provider == ProviderKind::Twilio && url.is_empty() {
        return Err(CliError::Usage(
            "twilio signs the URL it called: pass --url with the full URL, query included"
                .to_string(),
        ));
    }
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if !signature::accepts_content_type(scheme.provider, content_type) {
        eprintln!(
            "note: {} never sends Content-Type {:?}; the receiver answers such deliveries 415",
            scheme.provider,
            content_type.unwrap_or("")
        );
    }
    let now = args.now.unwrap_or_else(now_unix);
    let secrets: Vec<&str> = args.secrets.iter().map(String::as_str).collect();
    if secrets.is_empty() && !signature::is_asymmetric(&scheme) {
        return Err(CliError::Usage(format!(
            "{} needs --secret",
            scheme.provider
        )));
    }
    let delivery = Delivery {
        method: &args.method,
        url,
        headers: &headers,
        body: &body,
    };
    let verdict = if signature::is_asymmetric(&scheme) {
        verify_published(args, &scheme, &secrets, &delivery, now)?
    } else {
        signature::verify(&scheme, &secrets, &delivery, now)
    };
    match verdict {
        Verdict::Valid(ok) => {
            let mut line = format!(
                "valid: {} delivery authenticated by secret #{} of {}",
                scheme.provider,
                ok.secret_index + 1,
                secrets.len()
            );
            if let Some(ts) = ok.timestamp {
                line.push_str(&format!(", timestamp {ts} ({}s from now)", ts - now));
            }
            println!("{line}");
            Ok(ExitCode::SUCCESS)
        }
        Verdict::Invalid(r) => {
            println!("invalid: {r} [{}]", r.code());
            Ok(ExitCode::from(1))
        }
    }
}

/// OIDC and SNS: with `--key-file`, the domain verifies against it; otherwise the keys
/// are fetched exactly as the receiver fetches them (same URL rules, limits and code).
fn verify_published(
    args: &VerifyArgs,
    scheme: &Scheme,
    secrets: &[&str],
    delivery: &Delivery<'_>,
    now: i64,
) -> Result<Verdict, CliError> {
    use signature::{External, der, jose, oidc};
    if let Some(path) = &args.key_file {
        let bytes = std::fs::read(path).map_err(|e| {
            CliError::Usage(format!("cannot read --key-file {}: {e}", path.display()))
        })?;
        if scheme.oidc.is_some() {
            let file = jose::JwkSet::parse(&bytes).map_err(|e| {
                CliError::Usage(format!(
                    "--key-file {} is not a usable JWKS: {e}",
                    path.display()
                ))
            })?;
            let inline = match oidc::inline_sets(secrets) {
                Ok(sets) => sets,
                Err(r) => return Ok(Verdict::Invalid(r)),
            };
            let sets: Vec<&jose::JwkSet> = inline.iter().chain(std::iter::once(&file)).collect();
            let external = External {
                jwks: Some(&sets),
                certificate: None,
            };
            return Ok(signature::verify_with(
                scheme, secrets, delivery, now, external,
            ));
        }
        let cert = der::parse_certificate(&bytes).map_err(|e| {
            CliError::Usage(format!(
                "--key-file {} is not a usable certificate: {e}",
                path.display()
            ))
        })?;
        let external = External {
            jwks: None,
            certificate: Some(&cert),
        };
        return Ok(signature::verify_with(
            scheme, secrets, delivery, now, external,
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Usage(format!("cannot start the key fetcher: {e}")))?;
    runtime.block_on(async {
        let sender = crate::forwarder::Sender::new(
            crate::forwarder::EgressPolicy::standalone(Vec::new(), None),
            crate::forwarder::SenderOptions::default(),
        )
        .map_err(|e| CliError::Usage(format!("cannot build the HTTP client: {e}")))?;
        let remote = crate::receiver::keys::RemoteKeys::new(
            sender,
            crate::receiver::keys::RemoteKeyOptions {
                insecure_urls: args.insecure_key_urls,
                ..Default::default()
            },
        );
        Ok(crate::receiver::keys::verify(Some(&remote), scheme, secrets, delivery, now).await)
    })
}

/// Headers (and, for SNS, the body) an asymmetric sender would send.
fn sign_published(
    scheme: &Scheme,
    key: &PrivateKeyFlags,
    input: &SignInput<'_>,
) -> Result<signature::Signed, CliError> {
    let path = key.private_key_file.as_ref().ok_or_else(|| {
        CliError::Usage(format!(
            "{} signs with a private key: pass --private-key-file",
            scheme.provider
        ))
    })?;
    let pem = std::fs::read_to_string(path).map_err(|e| {
        CliError::Usage(format!(
            "cannot read --private-key-file {}: {e}",
            path.display()
        ))
    })?;
    let rng = ring::rand::SystemRandom::new();
    signature::sign_asymmetric(scheme, &pem, key.key_id.as_deref(), input, &rng)
        .map_err(|e| CliError::Usage(e.to_string()))
}

fn random_id() -> String {
    let mut bytes = [0u8; 12];
    rand::fill(&mut bytes);
    format!("msg_{}", hex::encode(bytes))
}

fn looks_like_json(body: &[u8]) -> bool {
    matches!(
        body.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{') | Some(b'[')
    )
}

fn default_content_type(provider: ProviderKind, body: &[u8]) -> &'static str {
    match provider {
        ProviderKind::Twilio | ProviderKind::Slack if !looks_like_json(body) => {
            "application/x-www-form-urlencoded"
        }
        _ => "application/json",
    }
}

/// `hookwarden sign`.
pub fn sign(args: SignArgs) -> ExitCode {
    match run_sign(&args) {
        Ok(signed) => {
            for (name, value) in signed.headers {
                println!("{name}: {value}");
            }
            // SNS signs inside the body: it follows the headers, as in an HTTP message.
            if let Some(body) = signed.body {
                println!();
                println!("{}", String::from_utf8_lossy(&body));
            }
            ExitCode::SUCCESS
        }
        Err(e) => usage_exit(e),
    }
}

fn run_sign(args: &SignArgs) -> Result<signature::Signed, CliError> {
    let scheme = build_scheme(&args.scheme)?;
    let body = read_body(&args.body_file)?;
    let id = args.id.clone().unwrap_or_else(random_id);
    let content_type = args
        .content_type
        .clone()
        .unwrap_or_else(|| default_content_type(scheme.provider, &body).to_string());
    let input = SignInput {
        body: &body,
        url: args.url.as_deref().unwrap_or(""),
        timestamp: args.timestamp.unwrap_or_else(now_unix),
        id: &id,
        content_type: &content_type,
    };
    if signature::is_asymmetric(&scheme) {
        return sign_published(&scheme, &args.key, &input);
    }
    signature::sign(&scheme, &args.secret, &input)
        .map(|headers| signature::Signed {
            headers,
            body: None,
        })
        .map_err(|e| CliError::Usage(e.to_string()))
}

/// `hookwarden send-test`.
pub async fn send_test(args: SendTestArgs) -> anyhow::Result<ExitCode> {
    let prepared = match build_scheme(&args.scheme).and_then(|scheme| {
        prepare_send(
            &scheme,
            &args.url,
            &args.secret,
            &SendOptions {
                resolve: args.resolve,
                incident_id: args.incident_id.clone(),
                id: args.id.clone(),
                body_file: args.body_file.clone(),
                key: Some(args.key.clone()),
            },
        )
    }) {
        Ok(p) => p,
        Err(e) => return Ok(usage_exit(e)),
    };
    Ok(send_prepared(prepared, &args.url, args.timeout_seconds).await)
}

/// What `send-test` (and `kubectl hookwarden send-test`) sends besides the scheme, URL
/// and secret.
#[derive(Clone, Debug, Default)]
pub(crate) struct SendOptions {
    /// Monitoring providers: the recovery instead of the trigger.
    pub resolve: bool,
    /// The sender's incident id (default hookwarden-send-test).
    pub incident_id: Option<String>,
    /// Delivery id (default: random).
    pub id: Option<String>,
    /// A body to send instead of the provider's sample.
    pub body_file: Option<PathBuf>,
    /// Providers that sign with a private key (OIDC tokens, SNS): the key to sign with.
    pub key: Option<PrivateKeyFlags>,
}

/// Sends a prepared delivery and prints the answer: exit 0 on 2xx, 1 otherwise (no answer
/// within `timeout_seconds`, connection failure, non-2xx).
pub(crate) async fn send_prepared(prepared: Prepared, url: &str, timeout_seconds: u64) -> ExitCode {
    let timeout = Duration::from_secs(timeout_seconds.max(1));
    match tokio::time::timeout(timeout, deliver(prepared)).await {
        Err(_) => {
            eprintln!("error: no answer from {url} within {}s", timeout.as_secs());
            ExitCode::from(1)
        }
        Ok(Err(e)) => {
            eprintln!("error: cannot deliver to {url}: {e:#}");
            ExitCode::from(1)
        }
        Ok(Ok((status, body))) => {
            println!(
                "{} {}",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            );
            if !body.is_empty() {
                println!("{}", String::from_utf8_lossy(&body));
            }
            if status.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// Everything to send, decided before any network I/O.
pub(crate) struct Prepared {
    request: http::Request<http_body_util::Full<bytes::Bytes>>,
}

/// The scheme the receivers build from `spec`, or why they would refuse the spec.
pub(crate) fn scheme_of(spec: &WebhookIntegrationSpec) -> Result<Scheme, String> {
    spec::resolve(spec)
        .map(|effective| effective.scheme)
        .map_err(|problems| format!("spec: {problems}"))
}

/// A signed sample delivery (or `options.body_file`) for `scheme`, addressed to `url`.
pub(crate) fn prepare_send(
    scheme: &Scheme,
    url: &str,
    secret: &str,
    options: &SendOptions,
) -> Result<Prepared, CliError> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| CliError::Usage(format!("{url:?} is not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(CliError::Usage(format!(
                "{url:?}: only http:// and https:// URLs can be sent to"
            )));
        }
    }
    let now = now_unix();
    let id = options.id.clone().unwrap_or_else(random_id);
    let opts = SampleOptions {
        resolve: options.resolve,
        incident_id: options.incident_id.clone(),
    };
    let mut sample = sample::sample_with(scheme.provider, now, &id, &opts);
    if let Some(path) = &options.body_file {
        sample.body = read_body(path)?;
        sample.content_type = default_content_type(scheme.provider, &sample.body);
    }
    // Twilio calls JSON webhooks with the body's hash in the URL, and signs that URL.
    let target =
        if scheme.provider == ProviderKind::Twilio && sample.content_type == "application/json" {
            signature::twilio_url_with_body_hash(url, &sample.body)
        } else {
            url.to_string()
        };
    let input = SignInput {
        body: &sample.body,
        url: &target,
        timestamp: now,
        id: &id,
        content_type: sample.content_type,
    };
    let auth = if signature::is_asymmetric(scheme) {
        let key = options.key.as_ref().ok_or_else(|| {
            CliError::Usage(format!(
                "provider {} signs with a private key: pass --private-key-file",
                scheme.provider
            ))
        })?;
        let signed = sign_published(scheme, key, &input)?;
        if let Some(body) = signed.body {
            sample.body = body;
        }
        signed.headers
    } else {
        signature::sign(scheme, secret, &input).map_err(|e| CliError::Usage(e.to_string()))?
    };
    let mut builder = http::Request::post(&target)
        .header(http::header::CONTENT_TYPE, sample.content_type)
        .header(
            http::header::USER_AGENT,
            concat!("hookwarden-send-test/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in sample.headers.iter().chain(auth.iter()) {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let request = builder
        .body(http_body_util::Full::new(bytes::Bytes::from(sample.body)))
        .map_err(|e| CliError::Usage(format!("cannot build the request: {e}")))?;
    Ok(Prepared { request })
}

async fn deliver(prepared: Prepared) -> anyhow::Result<(http::StatusCode, Vec<u8>)> {
    use http_body_util::BodyExt as _;

    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    let response = client.request(prepared.request).await?;
    let status = response.status();
    let mut body = response.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            let room = MAX_RESPONSE_BYTES.saturating_sub(out.len());
            out.extend_from_slice(&data[..data.len().min(room)]);
            if out.len() >= MAX_RESPONSE_BYTES {
                break;
            }
        }
    }
    Ok((status, out))
}

/// `hookwarden replay` against a cluster: sets the replay annotations through the
/// kubeconfig (merge patch), so every receiver re-queues the dead letters once.
pub async fn replay_in_cluster(
    name: &str,
    namespace: Option<&str>,
    request: &crate::route::ReplayRequest,
) -> anyhow::Result<ExitCode> {
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: no cluster to talk to ({e}); for standalone pass --dir or --state");
            return Ok(ExitCode::from(2));
        }
    };
    let namespace = namespace
        .map(str::to_string)
        .unwrap_or_else(|| client.default_namespace().to_string());
    Ok(request_replay(client, &namespace, name, request).await)
}

/// Sets the replay annotations on `namespace/name` (merge patch) and says what happens
/// next, or why it could not (not found, RBAC).
pub(crate) async fn request_replay(
    client: kube::Client,
    namespace: &str,
    name: &str,
    request: &crate::route::ReplayRequest,
) -> ExitCode {
    use kube::api::{Api, Patch, PatchParams};
    let api: Api<crate::crd::WebhookIntegration> = Api::namespaced(client, namespace);
    let patch = serde_json::json!({"metadata": {"annotations": {
        crate::route::REPLAY_ANNOTATION: request.value,
        crate::route::REPLAY_TARGET_ANNOTATION: request.target,
    }}});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            println!(
                "replay requested for {namespace}/{name}{}: every receiver re-queues its dead letters (Event ForwardReplayed)",
                request
                    .target
                    .as_deref()
                    .map(|t| format!(" (target {t})"))
                    .unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Err(kube::Error::Api(e)) if e.code == 404 => {
            eprintln!("error: webhookintegration {namespace}/{name} not found");
            ExitCode::from(1)
        }
        Err(kube::Error::Api(e)) if e.code == 403 => {
            eprintln!(
                "error: not allowed to patch webhookintegration {namespace}/{name}: {} (ask for patch on webhookintegrations.hookwarden.dev)",
                e.message
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: cannot set the replay annotation: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_as_name_colon_value() {
        let map = parse_headers(&[
            "X-Hub-Signature-256: sha256=ab".to_string(),
            "x-a:b".to_string(),
        ])
        .expect("headers");
        assert_eq!(
            map.get("x-hub-signature-256").and_then(|v| v.to_str().ok()),
            Some("sha256=ab")
        );
        assert_eq!(map.get("X-A").and_then(|v| v.to_str().ok()), Some("b"));
        assert!(parse_headers(&["no colon".to_string()]).is_err());
        assert!(parse_headers(&["bad name: v".to_string()]).is_err());
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let args = SignArgs {
            scheme: SchemeArgs {
                provider: Some(ProviderKind::Github),
                spec: None,
                token_header: None,
                auth: None,
                generic: GenericFlags::default(),
                oidc: OidcFlags::default(),
            },
            secret: "s3cr3t-value".to_string(),
            key: PrivateKeyFlags::default(),
            body_file: PathBuf::from("b"),
            timestamp: None,
            id: None,
            url: None,
            content_type: None,
        };
        assert!(!format!("{args:?}").contains("s3cr3t-value"));
    }
}
