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

/// Constant-time equality of two MACs of one algorithm, whose length is public (every
/// MAC of an algorithm has the same length, and the caller checked it): contents are
/// compared without early exit. For values whose length is secret (tokens, anything the
/// sender chooses the length of), use [`ct_eq_secret`].
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Constant-time equality of two byte strings of any length that reveals neither the
/// contents nor the length of either: both sides are first reduced to a fixed-length
/// keyed digest, SHA-256 over a per-process random 64-byte block followed by the bytes,
/// and the 32-byte digests are compared without early exit. The work depends only on
/// the lengths of the inputs (hashing is linear), never on where they differ or whether
/// the lengths match; a comparison of a 3-byte guess against a 40-byte token takes the
/// same path as a comparison of two 40-byte strings.
///
/// The digest is a prefix-keyed hash, not HMAC: HMAC's second (outer) hash protects a
/// MAC whose value an attacker sees from length extension, and these digests never leave
/// this function. Two different inputs with equal digests would be a SHA-256 collision,
/// keyed or not; the random block means no pair can be prepared against this process
/// either. The block is absorbed once per process, so a token up to 55 bytes costs one
/// SHA-256 block per side (HMAC cost two: this runs on every token delivery).
pub fn ct_eq_secret(a: &[u8], b: &[u8]) -> bool {
    use sha2::Digest as _;
    static KEYED: std::sync::OnceLock<Sha256> = std::sync::OnceLock::new();
    let keyed = KEYED.get_or_init(|| {
        let mut state = Sha256::new();
        state.update(rand::random::<[u8; 64]>());
        state
    });
    let digest = |bytes: &[u8]| {
        let mut state = keyed.clone();
        state.update(bytes);
        state.finalize()
    };
    let (da, db) = (digest(a), digest(b));
    // Both are 32 bytes: `ct_eq`'s length check is not an early exit on secret data.
    ct_eq(&da, &db)
}

/// Hex in either case, surrounding whitespace ignored.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    // A table lookup per digit and one check at the end: `hex::decode` collects through
    // an iterator of `Result`s, and even `hex::decode_to_slice` branches on every digit;
    // this runs on every signed delivery.
    let s = s.trim().as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 2);
    let mut invalid = 0u8;
    for pair in s.chunks_exact(2) {
        let (hi, lo) = (HEX_DIGIT[pair[0] as usize], HEX_DIGIT[pair[1] as usize]);
        invalid |= hi | lo;
        out.push((hi << 4) | lo);
    }
    (invalid & 0xf0 == 0).then_some(out)
}

/// The value of each byte as a hex digit (either case); 0xff for every other byte.
const HEX_DIGIT: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

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
    fn secret_equality_compares_any_lengths_through_fixed_digests() {
        let token = b"a-forty-byte-token-0123456789abcdefghijk";
        assert!(ct_eq_secret(token, token));
        assert!(ct_eq_secret(b"", b""));
        assert!(!ct_eq_secret(
            token,
            b"a-forty-byte-token-0123456789abcdefghijK"
        ));
        // Prefixes, extensions and the empty string differ without a length short cut.
        assert!(!ct_eq_secret(token, &token[..3]));
        assert!(!ct_eq_secret(&token[..3], token));
        let mut longer = token.to_vec();
        longer.push(b'x');
        assert!(!ct_eq_secret(token, &longer));
        assert!(!ct_eq_secret(token, b""));
        assert!(!ct_eq_secret(b"", token));
        // Trailing zero bytes are not padding that could make two lengths equal.
        assert!(!ct_eq_secret(b"abc", b"abc\0"));
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
