//! Amazon SNS HTTP(S) deliveries: the message is a JSON body signed by AWS with the
//! RSA key of the certificate at `SigningCertURL`; `SignatureVersion` 1 is SHA1withRSA,
//! 2 is SHA256withRSA, over `Name\nValue\n` of the documented fields in their documented
//! order (https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html).
//!
//! The certificate is fetched by the receiver (after [`cert_url_allowed`]); this module
//! only parses, builds the string to sign and checks. Pure: the time is passed in.

use ring::signature as rs;
use serde_json::Value;

use super::der::Certificate;
use super::{Rejection, Verified};
use crate::crd::SnsSpec;

/// How far a message's `Timestamp` may be ahead of our clock.
pub const FUTURE_TOLERANCE_SECONDS: i64 = 300;
/// Oldest message accepted when the integration keeps no delivery ids (SNS retries an
/// HTTP endpoint for about an hour under its default delivery policy).
pub const DEFAULT_MAX_AGE_SECONDS: i64 = 3600;

/// What an SNS integration accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnsPolicy {
    /// Empty: any topic.
    pub topic_arns: Vec<String>,
    pub auto_confirm: bool,
    /// Messages older than this are refused: past the dedup window a captured message
    /// could otherwise be replayed (its `MessageId` forgotten).
    pub max_age_seconds: i64,
}

impl SnsPolicy {
    pub fn from_spec(spec: Option<&SnsSpec>, dedup_window_seconds: i64) -> SnsPolicy {
        SnsPolicy {
            topic_arns: spec.map(|s| s.topic_arns.clone()).unwrap_or_default(),
            auto_confirm: spec.and_then(|s| s.auto_confirm).unwrap_or(true),
            max_age_seconds: if dedup_window_seconds > 0 {
                dedup_window_seconds
            } else {
                DEFAULT_MAX_AGE_SECONDS
            },
        }
    }
}

/// The kinds of SNS messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    Notification,
    SubscriptionConfirmation,
    UnsubscribeConfirmation,
}

impl MessageType {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Notification => "Notification",
            MessageType::SubscriptionConfirmation => "SubscriptionConfirmation",
            MessageType::UnsubscribeConfirmation => "UnsubscribeConfirmation",
        }
    }

    /// The signed fields, in the documented order; `Subject` only when present.
    fn signed_fields(self) -> &'static [&'static str] {
        match self {
            MessageType::Notification => &[
                "Message",
                "MessageId",
                "Subject",
                "Timestamp",
                "TopicArn",
                "Type",
            ],
            _ => &[
                "Message",
                "MessageId",
                "SubscribeURL",
                "Timestamp",
                "Token",
                "TopicArn",
                "Type",
            ],
        }
    }
}

/// An SNS message, read from the body (nothing verified yet).
#[derive(Clone, Debug)]
pub struct Message {
    pub kind: MessageType,
    pub fields: serde_json::Map<String, Value>,
}

impl Message {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }

    pub fn signing_cert_url(&self) -> Option<&str> {
        self.field("SigningCertURL")
    }

    pub fn subscribe_url(&self) -> Option<&str> {
        self.field("SubscribeURL")
    }
}

/// Reads the body as an SNS message.
pub fn parse(body: &[u8]) -> Result<Message, Rejection> {
    let value: Value = serde_json::from_slice(body).map_err(|_| Rejection::MalformedBody {
        reason: "an SNS message is a JSON object",
    })?;
    let Value::Object(fields) = value else {
        return Err(Rejection::MalformedBody {
            reason: "an SNS message is a JSON object",
        });
    };
    let kind = match fields.get("Type").and_then(Value::as_str) {
        Some("Notification") => MessageType::Notification,
        Some("SubscriptionConfirmation") => MessageType::SubscriptionConfirmation,
        Some("UnsubscribeConfirmation") => MessageType::UnsubscribeConfirmation,
        _ => {
            return Err(Rejection::MalformedBody {
                reason: "Type is not Notification, SubscriptionConfirmation or UnsubscribeConfirmation",
            });
        }
    };
    Ok(Message { kind, fields })
}

/// Whether `url` may be fetched for this message (certificate or subscription):
/// https on `sns.<region>.amazonaws.com` (`.com.cn` in China). `insecure` (a receiver
/// flag for tests) allows any http(s) URL.
pub fn url_allowed(url: &str, insecure: bool) -> Result<(), &'static str> {
    let host = super::oidc::host_of(url).ok_or("not an http(s) URL")?;
    if insecure {
        return Ok(());
    }
    if !url.starts_with("https://") {
        return Err("not https");
    }
    let host = host.to_ascii_lowercase();
    let region = host
        .strip_prefix("sns.")
        .and_then(|h| {
            h.strip_suffix(".amazonaws.com")
                .or_else(|| h.strip_suffix(".amazonaws.com.cn"))
        })
        .ok_or("host is not sns.<region>.amazonaws.com")?;
    if region.is_empty()
        || !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("host is not sns.<region>.amazonaws.com");
    }
    Ok(())
}

/// The string AWS signs for this message.
pub fn string_to_sign(message: &Message) -> Result<String, Rejection> {
    let mut out = String::new();
    for name in message.kind.signed_fields() {
        match message.field(name) {
            Some(v) => {
                out.push_str(name);
                out.push('\n');
                out.push_str(v);
                out.push('\n');
            }
            None if *name == "Subject" => {}
            None => {
                return Err(Rejection::MalformedBody {
                    reason: "a field SNS signs is missing",
                });
            }
        }
    }
    Ok(out)
}

/// Verifies a message against the certificate its `SigningCertURL` served, at `now`.
pub fn verify(
    policy: &SnsPolicy,
    message: &Message,
    certificate: &Certificate,
    now: i64,
) -> Result<Verified, Rejection> {
    let algorithm: &rs::RsaParameters = match message.field("SignatureVersion") {
        Some("1") => &rs::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
        Some("2") => &rs::RSA_PKCS1_2048_8192_SHA256,
        _ => {
            return Err(Rejection::MalformedSignature {
                header: "SignatureVersion".to_string(),
                reason: "not 1 or 2",
            });
        }
    };
    let signature = message
        .field("Signature")
        .ok_or_else(|| Rejection::MissingSignature {
            header: "Signature".to_string(),
        })
        .and_then(|s| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|_| Rejection::MalformedSignature {
                    header: "Signature".to_string(),
                    reason: "not base64",
                })
        })?;
    if now < certificate.not_before || now > certificate.not_after {
        return Err(Rejection::CertificateInvalid {
            reason: "the signing certificate is not valid now",
        });
    }
    let text = string_to_sign(message)?;
    rs::UnparsedPublicKey::new(algorithm, &certificate.rsa_public_key)
        .verify(text.as_bytes(), &signature)
        .map_err(|_| Rejection::SignatureMismatch { secrets: 1 })?;
    // Only an authentic message's topic and time mean anything.
    let topic = message.field("TopicArn").unwrap_or("");
    if !policy.topic_arns.is_empty() && !policy.topic_arns.iter().any(|t| t == topic) {
        return Err(Rejection::TopicNotAllowed);
    }
    let source = || "SNS Timestamp".to_string();
    let timestamp = message
        .field("Timestamp")
        .ok_or_else(|| Rejection::MissingTimestamp { source: source() })?
        .parse::<jiff::Timestamp>()
        .map_err(|_| Rejection::MalformedTimestamp { source: source() })?
        .as_second();
    let age = now.saturating_sub(timestamp);
    if age > policy.max_age_seconds {
        return Err(Rejection::TimestampStale {
            age_seconds: age,
            tolerance_seconds: policy.max_age_seconds,
        });
    }
    if -age > FUTURE_TOLERANCE_SECONDS {
        return Err(Rejection::TimestampFuture {
            ahead_seconds: -age,
            tolerance_seconds: FUTURE_TOLERANCE_SECONDS,
        });
    }
    Ok(Verified {
        secret_index: 0,
        timestamp: Some(timestamp),
    })
}

/// Fills in `SignatureVersion` 2 and `Signature` of an SNS message body with `key`
/// (`hookwarden sign` / `send-test`; SHA1 signing is legacy and not offered).
pub fn sign_body(
    body: &[u8],
    key: &super::jose::PrivateKey,
    rng: &dyn ring::rand::SecureRandom,
) -> Result<Vec<u8>, &'static str> {
    let mut message = parse(body).map_err(|_| "the body is not an SNS message (JSON with Type)")?;
    message
        .fields
        .insert("SignatureVersion".into(), Value::String("2".into()));
    let text =
        string_to_sign(&message).map_err(|_| "a field SNS signs is missing from the body")?;
    let sig = key.sign_rsa_sha256(text.as_bytes(), rng)?;
    use base64::Engine as _;
    message.fields.insert(
        "Signature".into(),
        Value::String(base64::engine::general_purpose::STANDARD.encode(sig)),
    );
    serde_json::to_vec(&Value::Object(message.fields)).map_err(|_| "cannot write JSON")
}

/// After verification: a `Message` that is JSON text (CloudWatch alarms, EventBridge,
/// most AWS publishers) is replaced by its JSON, so mappings, schemas and event filters
/// read its fields (`/Message/AlarmName`). Other messages stay text.
pub fn expand_message(body: &mut Value) {
    if let Some(message) = body.get_mut("Message")
        && let Some(text) = message.as_str()
        && text.trim_start().starts_with(['{', '['])
        && let Ok(parsed) = serde_json::from_str::<Value>(text)
    {
        *message = parsed;
    }
}

/// The headers SNS sends with a message.
pub fn headers(message: &Message) -> Vec<(String, String)> {
    let mut out = vec![(
        "x-amz-sns-message-type".to_string(),
        message.kind.as_str().to_string(),
    )];
    for (header, field) in [
        ("x-amz-sns-message-id", "MessageId"),
        ("x-amz-sns-topic-arn", "TopicArn"),
    ] {
        if let Some(v) = message.field(field) {
            out.push((header.to_string(), v.to_string()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_and_subscriptions_only_from_sns_hosts() {
        for ok in [
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem",
            "https://sns.cn-north-1.amazonaws.com.cn/x.pem",
            "https://SNS.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=1",
        ] {
            assert!(url_allowed(ok, false).is_ok(), "{ok}");
        }
        for bad in [
            "http://sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com.evil.io/x.pem",
            "https://evil.io/sns.us-east-1.amazonaws.com/x.pem",
            "https://s3.us-east-1.amazonaws.com/x.pem",
            "https://sns..amazonaws.com/x.pem",
            "https://user@sns.us-east-1.amazonaws.com/x.pem",
            "ftp://sns.us-east-1.amazonaws.com/x.pem",
        ] {
            assert!(url_allowed(bad, false).is_err(), "{bad}");
        }
        assert!(url_allowed("http://127.0.0.1:9/cert.pem", true).is_ok());
    }

    #[test]
    fn the_string_to_sign_follows_awss_field_order_per_type() {
        let n = parse(br#"{"Type":"Notification","MessageId":"m","TopicArn":"t","Message":"hi","Timestamp":"2026-01-01T00:00:00.000Z","UnsubscribeURL":"u"}"#).expect("parse");
        assert_eq!(
            string_to_sign(&n).expect("sts"),
            "Message\nhi\nMessageId\nm\nTimestamp\n2026-01-01T00:00:00.000Z\nTopicArn\nt\nType\nNotification\n"
        );
        let c = parse(br#"{"Type":"SubscriptionConfirmation","MessageId":"m","Token":"k","TopicArn":"t","Message":"hi","SubscribeURL":"s","Timestamp":"x"}"#).expect("parse");
        assert_eq!(
            string_to_sign(&c).expect("sts"),
            "Message\nhi\nMessageId\nm\nSubscribeURL\ns\nTimestamp\nx\nToken\nk\nTopicArn\nt\nType\nSubscriptionConfirmation\n"
        );
        let missing =
            parse(br#"{"Type":"SubscriptionConfirmation","MessageId":"m"}"#).expect("parse");
        assert_eq!(
            string_to_sign(&missing).expect_err("refused").code(),
            "malformed_body"
        );
        assert_eq!(
            parse(br#"{"Type":"Other"}"#).expect_err("refused").code(),
            "malformed_body"
        );
        assert_eq!(parse(b"[]").expect_err("refused").code(), "malformed_body");
    }

    #[test]
    fn json_messages_are_expanded_and_text_ones_kept() {
        let mut v = serde_json::json!({"Message": "{\"AlarmName\":\"a\"}"});
        expand_message(&mut v);
        assert_eq!(v["Message"]["AlarmName"], "a");
        let mut v = serde_json::json!({"Message": "{not json"});
        expand_message(&mut v);
        assert_eq!(v["Message"], "{not json");
    }
}
