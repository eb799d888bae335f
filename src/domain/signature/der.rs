//! Just enough DER and PEM to take the RSA public key and validity out of an X.509
//! certificate (SNS `SigningCertURL`) and to read private keys for `hookwarden sign`.
//! Every length is checked against what is left; nothing recurses on input.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The first PEM block of `text`: its label and DER bytes.
pub fn pem_decode(text: &str) -> Option<(String, Vec<u8>)> {
    let start = text.find("-----BEGIN ")?;
    let rest = &text[start + 11..];
    let label_end = rest.find("-----")?;
    let label = rest[..label_end].to_string();
    let body_start = label_end + 5;
    let end_marker = format!("-----END {label}-----");
    let body_end = rest[body_start..].find(&end_marker)? + body_start;
    let b64: String = rest[body_start..body_end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let der = STANDARD.decode(b64).ok()?;
    Some((label, der))
}

/// One TLV: its tag, its content, and what follows it.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (t, content, rest) = tlv(input)?;
    (t == tag).then_some((content, rest))
}

const SEQUENCE: u8 = 0x30;
const BIT_STRING: u8 = 0x03;
const OID: u8 = 0x06;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// 1.2.840.113549.1.1.1 rsaEncryption.
const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// What a certificate says that a signature check needs.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    /// PKCS#1 `RSAPublicKey` DER (what ring's RSA verification takes).
    pub rsa_public_key: Vec<u8>,
    /// Validity, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Parses a PEM (or DER) X.509 certificate carrying an RSA key.
pub fn parse_certificate(bytes: &[u8]) -> Result<Certificate, &'static str> {
    let der = match std::str::from_utf8(bytes).ok().and_then(pem_decode) {
        Some((label, der)) if label == "CERTIFICATE" => der,
        Some(_) => return Err("PEM block is not a CERTIFICATE"),
        None => bytes.to_vec(),
    };
    let (cert, _) = expect(&der, SEQUENCE).ok_or("not a DER certificate")?;
    let (tbs, _) = expect(cert, SEQUENCE).ok_or("no tbsCertificate")?;
    let mut rest = tbs;
    // [0] EXPLICIT version, optional.
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest).ok_or("bad version")?.2;
    }
    // serialNumber, signature, issuer
    for what in ["bad serial number", "bad signature algorithm", "bad issuer"] {
        rest = tlv(rest).ok_or(what)?.2;
    }
    let (validity, after_validity) = expect(rest, SEQUENCE).ok_or("bad validity")?;
    let (not_before, validity_rest) = time(validity).ok_or("bad notBefore")?;
    let (not_after, _) = time(validity_rest).ok_or("bad notAfter")?;
    // subject
    let rest = tlv(after_validity).ok_or("bad subject")?.2;
    let (spki, _) = expect(rest, SEQUENCE).ok_or("bad subjectPublicKeyInfo")?;
    let (alg, key) = expect(spki, SEQUENCE).ok_or("bad key algorithm")?;
    let (oid, _) = expect(alg, OID).ok_or("bad key algorithm")?;
    if oid != RSA_ENCRYPTION {
        return Err("certificate key is not RSA");
    }
    let (bits, _) = expect(key, BIT_STRING).ok_or("bad public key")?;
    let (&unused, rsa_public_key) = bits.split_first().ok_or("bad public key")?;
    if unused != 0 || expect(rsa_public_key, SEQUENCE).is_none() {
        return Err("bad RSA public key");
    }
    Ok(Certificate {
        rsa_public_key: rsa_public_key.to_vec(),
        not_before,
        not_after,
    })
}

/// A UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) as Unix seconds.
fn time(input: &[u8]) -> Option<(i64, &[u8])> {
    let (tag, content, rest) = tlv(input)?;
    let text = std::str::from_utf8(content).ok()?;
    let text = text.strip_suffix('Z')?;
    let digits = |s: &str| -> Option<i64> {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
    };
    let (year, rest_text) = match tag {
        UTC_TIME if text.len() == 12 => {
            let yy = digits(&text[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        GENERALIZED_TIME if text.len() == 14 => (digits(&text[..4])?, &text[4..]),
        _ => return None,
    };
    let month = digits(&rest_text[0..2])?;
    let day = digits(&rest_text[2..4])?;
    let hour = digits(&rest_text[4..6])?;
    let minute = digits(&rest_text[6..8])?;
    let second = digits(&rest_text[8..10])?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    Some((
        days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second,
        rest,
    ))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days_match_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 12, 7) * 86_400, 1_796_601_600);
    }

    #[test]
    fn truncated_or_garbage_der_is_refused_not_panicking() {
        for bytes in [
            &b""[..],
            b"\x30",
            b"\x30\x84\xff\xff\xff\xff",
            b"\x30\x03\x30\x01",
        ] {
            assert!(parse_certificate(bytes).is_err());
        }
        assert!(
            parse_certificate(b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----")
                .is_err()
        );
        assert!(
            parse_certificate(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----")
                .is_err()
        );
    }
}
