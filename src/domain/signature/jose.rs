//! JSON Web Tokens signed with public keys (RFC 7515/7519) and key sets (RFC 7517), just
//! as far as OIDC senders need: RS256, ES256 and EdDSA (Ed25519), compact form only.
//!
//! Why our own small parser over ring rather than a JWT crate: the checks that matter
//! (the algorithm comes from our allow-list and must fit the key's type, `none` and HMAC
//! never verify, `crit` is refused) are a few lines here, and ring is already built for
//! TLS, so verification adds no crate to the build. Pure: no I/O, time passed in.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature as rs;
use serde_json::Value;

use crate::crd::JwtAlgorithm;

/// Longest compact token accepted (Google's and GitHub's are under 2 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Most keys kept from one JWKS document.
pub const MAX_JWKS_KEYS: usize = 64;

impl JwtAlgorithm {
    pub const ALL: [JwtAlgorithm; 3] = [
        JwtAlgorithm::RS256,
        JwtAlgorithm::ES256,
        JwtAlgorithm::EdDSA,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::RS256 => "RS256",
            JwtAlgorithm::ES256 => "ES256",
            JwtAlgorithm::EdDSA => "EdDSA",
        }
    }

    pub fn parse(s: &str) -> Option<JwtAlgorithm> {
        JwtAlgorithm::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// A public key from a JWKS.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// Modulus and exponent, big-endian.
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed SEC1 point (0x04 ‖ x ‖ y).
    P256(Vec<u8>),
    Ed25519(Vec<u8>),
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublicKey::Rsa { n, .. } => write!(f, "Rsa({} bits)", n.len() * 8),
            PublicKey::P256(_) => f.write_str("P256"),
            PublicKey::Ed25519(_) => f.write_str("Ed25519"),
        }
    }
}

impl PublicKey {
    /// The one algorithm this key verifies: the token's `alg` must name it, so an RSA
    /// key is never used as an HMAC secret or for another curve.
    pub fn algorithm(&self) -> JwtAlgorithm {
        match self {
            PublicKey::Rsa { .. } => JwtAlgorithm::RS256,
            PublicKey::P256(_) => JwtAlgorithm::ES256,
            PublicKey::Ed25519(_) => JwtAlgorithm::EdDSA,
        }
    }

    /// Whether `signature` signs `message` under this key.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            PublicKey::Rsa { n, e } => rs::RsaPublicKeyComponents { n, e }
                .verify(&rs::RSA_PKCS1_2048_8192_SHA256, message, signature)
                .is_ok(),
            PublicKey::P256(point) => {
                rs::UnparsedPublicKey::new(&rs::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, signature)
                    .is_ok()
            }
            PublicKey::Ed25519(x) => rs::UnparsedPublicKey::new(&rs::ED25519, x)
                .verify(message, signature)
                .is_ok(),
        }
    }
}

/// One usable key of a JWKS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Jwk {
    pub kid: Option<String>,
    pub key: PublicKey,
}

/// The usable keys of a JWKS document; keys of other types (`oct`, other curves,
/// `use: enc`) are skipped, not errors, since issuers publish several kinds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
    /// Entries that were not usable signing keys.
    pub skipped: usize,
}

/// Why a JWKS document cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("not a JSON object with a \"keys\" array")]
    NotAKeySet,
    #[error("key {index}: {reason}")]
    BadKey { index: usize, reason: &'static str },
    #[error("more than {MAX_JWKS_KEYS} keys")]
    TooManyKeys,
}

impl JwkSet {
    /// Parses a JWKS document (`{"keys": [...]}`). A malformed entry of a usable type is
    /// an error (the issuer's document is broken, better said than skipped).
    pub fn parse(bytes: &[u8]) -> Result<JwkSet, JwksError> {
        let doc: Value = serde_json::from_slice(bytes).map_err(|_| JwksError::NotAKeySet)?;
        let entries = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwksError::NotAKeySet)?;
        if entries.len() > MAX_JWKS_KEYS {
            return Err(JwksError::TooManyKeys);
        }
        let mut set = JwkSet::default();
        for (index, entry) in entries.iter().enumerate() {
            match parse_jwk(entry).map_err(|reason| JwksError::BadKey { index, reason })? {
                Some(jwk) => set.keys.push(jwk),
                None => set.skipped += 1,
            }
        }
        Ok(set)
    }

    /// Whether a key with this id (or, for a token without `kid`, any key for `alg`) is
    /// in the set.
    pub fn has(&self, kid: Option<&str>, alg: JwtAlgorithm) -> bool {
        self.candidates(kid, alg).next().is_some()
    }

    fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: JwtAlgorithm,
    ) -> impl Iterator<Item = &'a Jwk> + 'a {
        self.keys.iter().filter(move |k| {
            k.key.algorithm() == alg
                && match kid {
                    Some(kid) => k.kid.as_deref() == Some(kid),
                    None => true,
                }
        })
    }
}

fn b64(field: Option<&Value>, reason: &'static str) -> Result<Vec<u8>, &'static str> {
    let s = field.and_then(Value::as_str).ok_or(reason)?;
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| reason)
}

fn parse_jwk(entry: &Value) -> Result<Option<Jwk>, &'static str> {
    let kty = entry.get("kty").and_then(Value::as_str).ok_or("no kty")?;
    if entry
        .get("use")
        .and_then(Value::as_str)
        .is_some_and(|u| u != "sig")
    {
        return Ok(None);
    }
    let declared = match entry.get("alg").and_then(Value::as_str) {
        None => None,
        Some(a) => match JwtAlgorithm::parse(a) {
            Some(a) => Some(a),
            // A key meant for another algorithm (RS384, HS256, …) is not ours to use.
            None => return Ok(None),
        },
    };
    let key = match kty {
        "RSA" => {
            let n = b64(entry.get("n"), "RSA key without a base64url n")?;
            let e = b64(entry.get("e"), "RSA key without a base64url e")?;
            let n = strip_zeros(n);
            if n.len() < 256 {
                return Err("RSA key shorter than 2048 bits");
            }
            if n.len() > 1024 || e.is_empty() || e.len() > 8 {
                return Err("RSA key of an unsupported size");
            }
            PublicKey::Rsa { n, e }
        }
        "EC" => {
            if entry.get("crv").and_then(Value::as_str) != Some("P-256") {
                return Ok(None);
            }
            let x = b64(entry.get("x"), "EC key without a base64url x")?;
            let y = b64(entry.get("y"), "EC key without a base64url y")?;
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 coordinates must be 32 bytes");
            }
            let mut point = Vec::with_capacity(65);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            PublicKey::P256(point)
        }
        "OKP" => {
            if entry.get("crv").and_then(Value::as_str) != Some("Ed25519") {
                return Ok(None);
            }
            let x = b64(entry.get("x"), "OKP key without a base64url x")?;
            if x.len() != 32 {
                return Err("Ed25519 key must be 32 bytes");
            }
            PublicKey::Ed25519(x)
        }
        // Symmetric (`oct`) and anything else: never a verification key here.
        _ => return Ok(None),
    };
    if declared.is_some_and(|a| a != key.algorithm()) {
        return Err("alg does not fit the key type");
    }
    let kid = entry
        .get("kid")
        .and_then(Value::as_str)
        .map(|k| k.chars().take(256).collect());
    Ok(Some(Jwk { kid, key }))
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let lead = v.iter().take_while(|b| **b == 0).count();
    v.drain(..lead);
    v
}

/// A compact JWS split and its header decoded; the signature is not checked yet.
#[derive(Clone, Debug)]
pub struct Token<'a> {
    /// `header.payload`, what the signature covers.
    pub signing_input: &'a str,
    pub alg: String,
    pub kid: Option<String>,
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Why a token could not be read.
pub type Malformed = &'static str;

/// Splits and decodes a compact JWS (`h.p.s`).
pub fn parse_token(token: &str) -> Result<Token<'_>, Malformed> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err("token longer than 16 KiB");
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a compact JWS (three base64url parts)");
    };
    let header = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| "header is not base64url")?;
    let header: Value = serde_json::from_slice(&header).map_err(|_| "header is not JSON")?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or("header has no alg")?
        .to_string();
    // RFC 7515 §4.1.11: a recipient must refuse extensions it does not understand.
    if header.get("crit").is_some() {
        return Err("header has crit extensions");
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err("kid is not a string"),
    };
    let payload = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| "payload is not base64url")?;
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| "signature is not base64url")?;
    Ok(Token {
        signing_input: &token[..h.len() + 1 + p.len()],
        alg,
        kid,
        payload,
        signature,
    })
}

/// Whether any key of `sets` for the token's `kid` and algorithm verifies its signature.
pub fn signature_verifies(token: &Token<'_>, alg: JwtAlgorithm, sets: &[&JwkSet]) -> bool {
    sets.iter()
        .flat_map(|set| set.candidates(token.kid.as_deref(), alg))
        .any(|k| {
            k.key
                .verifies(token.signing_input.as_bytes(), &token.signature)
        })
}

/// A private key for signing test tokens (`hookwarden sign`).
pub enum PrivateKey {
    Rsa(rs::RsaKeyPair),
    P256(rs::EcdsaKeyPair),
    Ed25519(rs::Ed25519KeyPair),
}

impl PrivateKey {
    /// From PEM: `PRIVATE KEY` (PKCS#8: RSA, P-256 or Ed25519) or `RSA PRIVATE KEY`
    /// (PKCS#1).
    pub fn from_pem(pem: &str) -> Result<PrivateKey, &'static str> {
        let (label, der) = super::der::pem_decode(pem).ok_or("not a PEM private key")?;
        match label.as_str() {
            "RSA PRIVATE KEY" => rs::RsaKeyPair::from_der(&der)
                .map(PrivateKey::Rsa)
                .map_err(|_| "not a usable RSA private key"),
            "PRIVATE KEY" => {
                if let Ok(k) = rs::RsaKeyPair::from_pkcs8(&der) {
                    return Ok(PrivateKey::Rsa(k));
                }
                if let Ok(k) = rs::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
                    return Ok(PrivateKey::Ed25519(k));
                }
                let rng = ring::rand::SystemRandom::new();
                rs::EcdsaKeyPair::from_pkcs8(&rs::ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
                    .map(PrivateKey::P256)
                    .map_err(|_| "PKCS#8 key is not RSA, P-256 or Ed25519")
            }
            _ => Err("PEM label is not PRIVATE KEY or RSA PRIVATE KEY"),
        }
    }

    pub fn algorithm(&self) -> JwtAlgorithm {
        match self {
            PrivateKey::Rsa(_) => JwtAlgorithm::RS256,
            PrivateKey::P256(_) => JwtAlgorithm::ES256,
            PrivateKey::Ed25519(_) => JwtAlgorithm::EdDSA,
        }
    }

    /// Signs with the key's JWS algorithm (RS256 / ES256 / EdDSA). RSA blinding and
    /// ECDSA nonces need randomness, passed in.
    pub fn sign(
        &self,
        message: &[u8],
        rng: &dyn ring::rand::SecureRandom,
    ) -> Result<Vec<u8>, &'static str> {
        match self {
            PrivateKey::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&rs::RSA_PKCS1_SHA256, rng, message, &mut sig)
                    .map_err(|_| "RSA signing failed")?;
                Ok(sig)
            }
            PrivateKey::P256(k) => k
                .sign(rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| "ECDSA signing failed"),
            PrivateKey::Ed25519(k) => Ok(k.sign(message).as_ref().to_vec()),
        }
    }

    /// Signs with RSA PKCS#1 v1.5 SHA-256 (SNS SignatureVersion 2).
    pub fn sign_rsa_sha256(
        &self,
        message: &[u8],
        rng: &dyn ring::rand::SecureRandom,
    ) -> Result<Vec<u8>, &'static str> {
        match self {
            PrivateKey::Rsa(_) => self.sign(message, rng),
            _ => Err("SNS signs with RSA: give an RSA private key"),
        }
    }
}

/// A compact JWS over `claims`, signed by `key`.
pub fn encode_token(
    key: &PrivateKey,
    kid: Option<&str>,
    claims: &Value,
    rng: &dyn ring::rand::SecureRandom,
) -> Result<String, &'static str> {
    let mut header = serde_json::json!({"alg": key.algorithm().as_str(), "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = Value::String(kid.to_string());
    }
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = key.sign(input.as_bytes(), rng)?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}
