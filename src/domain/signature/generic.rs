//! `provider: generic`: an HMAC configured by `spec.signature` — header, hash, encoding,
//! prefix, and a signed-content template over `{body}`, `{timestamp}` and `{id}`.

use super::crypto::{Algorithm, decode_base64, decode_hex, encode_base64, mac};
use super::hmac_presets::{match_any, parse_rfc3339_or_unix, strip_prefix_ci};
use super::{
    DEFAULT_TOLERANCE_SECONDS, Delivery, Keys, Rejection, SchemeError, SignInput, Verified,
    check_window, header, valid_header_name,
};
use crate::crd::{HmacAlgorithm, SignatureEncoding, SignatureSpec};

/// One piece of the signed content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    Body,
    Timestamp,
    Id,
}

/// A validated `spec.signature`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GenericScheme {
    /// Signature header, lower case.
    pub header: String,
    pub algorithm: HmacAlgorithm,
    pub encoding: SignatureEncoding,
    pub prefix: String,
    pub signed_content: Vec<Segment>,
    pub timestamp_header: Option<String>,
    pub id_header: Option<String>,
    pub tolerance_seconds: i64,
}

/// Splits a template such as `{timestamp}.{body}` into segments.
pub fn parse_template(template: &str) -> Result<Vec<Segment>, SchemeError> {
    let mut out = Vec::new();
    let mut literal = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        literal.push_str(&rest[..open]);
        let after = &rest[open..];
        let (segment, len) = if after.starts_with("{body}") {
            (Segment::Body, 6)
        } else if after.starts_with("{timestamp}") {
            (Segment::Timestamp, 11)
        } else if after.starts_with("{id}") {
            (Segment::Id, 4)
        } else {
            return Err(SchemeError::InvalidSignedContent(format!(
                "unknown placeholder at {:?}; use {{body}}, {{timestamp}} or {{id}}",
                after.chars().take(16).collect::<String>()
            )));
        };
        if !literal.is_empty() {
            out.push(Segment::Literal(std::mem::take(&mut literal)));
        }
        out.push(segment);
        rest = &after[len..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        out.push(Segment::Literal(literal));
    }
    if !out.contains(&Segment::Body) {
        return Err(SchemeError::InvalidSignedContent(
            "must include {body}".to_string(),
        ));
    }
    Ok(out)
}

impl GenericScheme {
    pub fn from_spec(spec: &SignatureSpec) -> Result<GenericScheme, SchemeError> {
        let signed_content = parse_template(&spec.signed_content)?;
        let timestamp_header = spec
            .timestamp_header
            .as_deref()
            .map(|h| valid_header_name("spec.signature.timestampHeader", h))
            .transpose()?;
        let id_header = spec
            .id_header
            .as_deref()
            .map(|h| valid_header_name("spec.signature.idHeader", h))
            .transpose()?;
        if signed_content.contains(&Segment::Timestamp) && timestamp_header.is_none() {
            return Err(SchemeError::InvalidSignedContent(
                "uses {timestamp}, so timestampHeader must be set".to_string(),
            ));
        }
        if signed_content.contains(&Segment::Id) && id_header.is_none() {
            return Err(SchemeError::InvalidSignedContent(
                "uses {id}, so idHeader must be set".to_string(),
            ));
        }
        Ok(GenericScheme {
            header: valid_header_name("spec.signature.header", &spec.header)?,
            algorithm: spec.algorithm,
            encoding: spec.encoding,
            prefix: spec.prefix.clone(),
            signed_content,
            timestamp_header,
            id_header,
            tolerance_seconds: spec
                .tolerance_seconds
                .map(i64::from)
                .unwrap_or(DEFAULT_TOLERANCE_SECONDS),
        })
    }

    fn alg(&self) -> Algorithm {
        match self.algorithm {
            HmacAlgorithm::Sha1 => Algorithm::Sha1,
            HmacAlgorithm::Sha256 => Algorithm::Sha256,
            HmacAlgorithm::Sha512 => Algorithm::Sha512,
        }
    }

    fn parts<'p>(&'p self, body: &'p [u8], timestamp: &'p str, id: &'p str) -> Vec<&'p [u8]> {
        self.signed_content
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => l.as_bytes(),
                Segment::Body => body,
                Segment::Timestamp => timestamp.as_bytes(),
                Segment::Id => id.as_bytes(),
            })
            .collect()
    }
}

pub(crate) fn verify(
    g: &GenericScheme,
    keys: &Keys<'_>,
    d: &Delivery<'_>,
    now: i64,
) -> Result<Verified, Rejection> {
    let alg = g.alg();
    let value = header(d.headers, &g.header)?.ok_or_else(|| Rejection::MissingSignature {
        header: g.header.clone(),
    })?;
    let encoded =
        strip_prefix_ci(value, &g.prefix).ok_or_else(|| Rejection::MalformedSignature {
            header: g.header.clone(),
            reason: "value does not start with the configured prefix",
        })?;
    let sig = match g.encoding {
        SignatureEncoding::Hex => decode_hex(encoded),
        SignatureEncoding::Base64 => decode_base64(encoded),
    }
    .filter(|s| s.len() == alg.output_len())
    .ok_or_else(|| Rejection::MalformedSignature {
        header: g.header.clone(),
        reason: "not an HMAC of the configured algorithm and encoding",
    })?;
    let timestamp = match &g.timestamp_header {
        Some(name) => {
            Some(
                header(d.headers, name)?.ok_or_else(|| Rejection::MissingTimestamp {
                    source: format!("{name} header"),
                })?,
            )
        }
        None => None,
    };
    let id = match &g.id_header {
        Some(name) if g.signed_content.contains(&Segment::Id) => header(d.headers, name)?
            .ok_or_else(|| Rejection::MissingId {
                header: name.clone(),
            })?,
        _ => "",
    };
    let parts = g.parts(d.body, timestamp.unwrap_or(""), id);
    let index = match_any(keys, alg, &[sig], &parts).ok_or(Rejection::SignatureMismatch {
        secrets: keys.len(),
    })?;
    let checked = match (timestamp, &g.timestamp_header) {
        (Some(raw), Some(name)) => {
            let ts = parse_rfc3339_or_unix(raw).ok_or_else(|| Rejection::MalformedTimestamp {
                source: format!("{name} header"),
            })?;
            check_window(ts, now, g.tolerance_seconds)?;
            Some(ts)
        }
        _ => None,
    };
    Ok(Verified {
        secret_index: index,
        timestamp: checked,
    })
}

pub(crate) fn sign(
    g: &GenericScheme,
    secret: &str,
    input: &SignInput<'_>,
) -> Vec<(String, String)> {
    let ts = input.timestamp.to_string();
    let parts = g.parts(input.body, &ts, input.id);
    let raw = mac(g.alg(), secret.as_bytes(), &parts);
    let encoded = match g.encoding {
        SignatureEncoding::Hex => hex::encode(raw),
        SignatureEncoding::Base64 => encode_base64(&raw),
    };
    let mut out = vec![(g.header.clone(), format!("{}{encoded}", g.prefix))];
    if let Some(h) = &g.timestamp_header {
        out.push((h.clone(), ts));
    }
    if let Some(h) = &g.id_header {
        out.push((h.clone(), input.id.to_string()));
    }
    out
}
