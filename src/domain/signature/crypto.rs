//! HMAC, encodings and constant-time comparison: the primitives every scheme shares.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_PAD_INDIFFERENT};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Sha256, Sha512};
use subtle::ConstantTimeEq as _;

/// Hash under the HMAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    /// Length of the MAC in bytes; a decoded signature of another length can never match.
    pub fn output_len(self) -> usize {
        match self {
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }
}

/// HMAC of the concatenation of `parts` (so the body is never copied to build the
/// signed content). HMAC accepts keys of any length, so this cannot fail.
pub fn mac(alg: Algorithm, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    fn run<M: Mac>(mut m: M, parts: &[&[u8]]) -> Vec<u8> {
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().to_vec()
    }
    // `new_from_slice` only fails for fixed-size-key MACs; HMAC takes any key length.
    match alg {
        Algorithm::Sha1 => Hmac::<Sha1>::new_from_slice(key).map(|m| run(m, parts)),
        Algorithm::Sha256 => Hmac::<Sha256>::new_from_slice(key).map(|m| run(m, parts)),
        Algorithm::Sha512 => Hmac::<Sha512>::new_from_slice(key).map(|m| run(m, parts)),
    }
    .unwrap_or_default()
}

/// Constant-time equality of two byte strings. Lengths are public (every MAC of one
/// algorithm has the same length), contents are compared without early exit.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Hex in either case, surrounding whitespace ignored.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    // `hex::decode` collects through an iterator of `Result`s, growing the vector as it
    // goes; one allocation of the known size and `decode_to_slice` is several times
    // cheaper on the request path.
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let mut out = vec![0u8; s.len() / 2];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Standard base64, padding optional (non-canonical trailing bits are refused, so
/// two different strings never decode to the same MAC).
pub fn decode_base64(s: &str) -> Option<Vec<u8>> {
    STANDARD_PAD_INDIFFERENT.decode(s.trim()).ok()
}

/// Standard base64 with padding, as every provider sends it.
pub fn encode_base64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// SHA-256 of `bytes`, lower-case hex (Twilio's `bodySHA256`).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_decoding_matches_the_hex_crate() {
        let every_byte: Vec<String> = (0..=255u8)
            .map(|b| String::from_utf8_lossy(&[b'a', b]).into_owned())
            .collect();
        let cases = [
            "",
            "00ff",
            "DEADbeef",
            " ab ",
            "abc",
            "zz",
            "0x12",
            "é1",
            "1é",
            "0123456789abcdefABCDEF",
        ];
        for s in cases
            .iter()
            .copied()
            .chain(every_byte.iter().map(String::as_str))
        {
            assert_eq!(decode_hex(s), hex::decode(s.trim()).ok(), "{s:?}");
        }
    }

    #[test]
    fn hmac_sha256_matches_rfc4231_case_2() {
        let out = mac(
            Algorithm::Sha256,
            b"Jefe",
            &[b"what do ya want ", b"for nothing?"],
        );
        assert_eq!(
            hex::encode(out),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn constant_time_equality_needs_equal_length_and_content() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }

    #[test]
    fn base64_accepts_missing_padding_but_not_other_alphabets() {
        assert_eq!(decode_base64("YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(decode_base64("YQ").as_deref(), Some(&b"a"[..]));
        assert_eq!(decode_base64("-_8="), None);
        assert_eq!(decode_base64("YR=="), None, "non-canonical trailing bits");
        assert_eq!(decode_base64("not base64!"), None);
    }
}
