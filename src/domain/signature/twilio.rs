//! Twilio: `X-Twilio-Signature`, base64 HMAC-SHA1 keyed with the account's auth token,
//! over the full URL Twilio called followed by every POST form parameter sorted by name,
//! each as name + value (repeated names: values de-duplicated and sorted, as twilio-node
//! does). JSON bodies are not signed as parameters: Twilio appends `bodySHA256=<hex>`
//! to the URL, signs the URL, and the body must hash to it. Twilio is inconsistent about
//! the default port, so the URL is tried as given, without its port and with the
//! scheme's default port, like the official helper libraries.

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::crypto::{Algorithm, ct_eq, decode_base64, encode_base64, mac, sha256_hex};
use super::hmac_presets::match_any;
use super::{Delivery, Keys, Rejection, SignError, SignInput, Verified, header};
use crate::crd::ProviderKind;

const HEADER: &str = "X-Twilio-Signature";
const BODY_HASH: &str = "bodySHA256";

/// Most query + form parameters a Twilio delivery may carry. Twilio's own requests carry
/// a few dozen (a voice status callback about 40); the cap bounds the work done before
/// authentication (every URL variant is re-encoded and MAC'd with every parameter), so
/// one request costs at most a few milliseconds whatever its size.
pub const MAX_PARAMETERS: usize = 1_000;

/// The value of a query parameter of `url`, percent-decoded.
fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    let query = query.split('#').next().unwrap_or(query);
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        let essence = super::media_type(ct);
        essence == "application/json" || essence.ends_with("+json")
    })
}

/// The string Twilio signs: URL then sorted parameters.
fn signed_data(url: &str, params: &[Param<'_>]) -> String {
    let len = url.len() + params.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
    let mut data = String::with_capacity(len);
    data.push_str(url);
    for (name, value) in params {
        data.push_str(name);
        data.push_str(value);
    }
    data
}

/// A decoded form parameter, borrowed from the body when nothing in it was encoded.
type Param<'b> = (Cow<'b, str>, Cow<'b, str>);

/// The form parameters in the order Twilio signs them: by name, then a repeated name's
/// values sorted and de-duplicated (as twilio-node does), i.e. the pairs sorted and
/// equal pairs kept once.
fn form_params(body: &[u8]) -> Vec<Param<'_>> {
    let mut params: Vec<Param<'_>> = form_urlencoded::parse(body).collect();
    params.sort_unstable();
    params.dedup();
    params
}

/// `body` with every `+` written as `%2B`, so it decodes as a literal plus.
fn plus_as_literal(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    for &b in body {
        if b == b'+' {
            out.extend_from_slice(b"%2B");
        } else {
            out.push(b);
        }
    }
    out
}

/// Every spelling of `url` Twilio may have signed: as given, without its explicit port,
/// with the scheme's default port, and each of those with the query re-encoded the
/// ways twilio-node tries (Node `querystring` legacy encoding; WHATWG encoding of `'`),
/// since Twilio's back end is not consistent about either.
pub(crate) fn url_variants(url: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for base in port_variants(url) {
        let legacy = legacy_query(&base);
        let whatwg = whatwg_quote(&base);
        for candidate in [Some(base), legacy, whatwg].into_iter().flatten() {
            if !out.contains(&candidate) {
                out.push(candidate);
            }
        }
    }
    out
}

/// `(before '?', query, from '#')` of a URL with a query.
fn split_query(url: &str) -> Option<(&str, &str, &str)> {
    let q = url.find('?')?;
    let (base, rest) = url.split_at(q);
    let rest = &rest[1..];
    let frag = rest.find('#').unwrap_or(rest.len());
    Some((base, &rest[..frag], &rest[frag..]))
}

/// Node's `querystring.escape`: everything but `A-Za-z0-9-_.!~*'()` percent-encoded.
fn node_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The query decoded and re-encoded by Node's `querystring` (repeated names grouped at
/// their first occurrence, as `querystring.parse` + `stringify` do). The grouping looks
/// names up in a map (O(n log n)), not by a scan of the groups so far, which was
/// quadratic in the number of parameters and ran before authentication.
fn legacy_query(url: &str) -> Option<String> {
    let (base, query, fragment) = split_query(url)?;
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match index.get(k.as_ref()) {
            Some(&at) => groups[at].1.push(v.into_owned()),
            None => {
                index.insert(k.clone().into_owned(), groups.len());
                groups.push((k.into_owned(), vec![v.into_owned()]));
            }
        }
    }
    let encoded: Vec<String> = groups
        .iter()
        .flat_map(|(k, values)| {
            values
                .iter()
                .map(move |v| format!("{}={}", node_escape(k), node_escape(v)))
        })
        .collect();
    Some(format!("{base}?{}{fragment}", encoded.join("&")))
}

/// WHATWG URL serialisation percent-encodes `'` in the query of http(s) URLs.
fn whatwg_quote(url: &str) -> Option<String> {
    let (base, query, fragment) = split_query(url)?;
    query
        .contains('\'')
        .then(|| format!("{base}?{}{fragment}", query.replace('\'', "%27")))
}

/// `url` as given, without its explicit port, and with the scheme's default port.
fn port_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_string()];
    let Some((scheme, rest)) = url.split_once("://") else {
        return out;
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(at) => authority.split_at(at + 1),
        None => ("", authority),
    };
    let host_end = hostport.rfind(']').map(|i| i + 1).unwrap_or(0);
    let (host, port) = match hostport[host_end..].rfind(':') {
        Some(colon) => {
            let colon = host_end + colon;
            (&hostport[..colon], Some(&hostport[colon + 1..]))
        }
        None => (hostport, None),
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" => "443",
        "http" => "80",
        _ => return out,
    };
    let other_authority = match port {
        Some(_) => format!("{userinfo}{host}"),
        None => format!("{userinfo}{host}:{default_port}"),
    };
    out.push(format!("{scheme}://{other_authority}{tail}"));
    // WHATWG URL serialisation (twilio-node) gives an empty path a "/".
    if tail.is_empty() || tail.starts_with('?') || tail.starts_with('#') {
        out.push(format!("{scheme}://{authority}/{tail}"));
        out.push(format!("{scheme}://{other_authority}/{tail}"));
    }
    out.dedup();
    out
}

pub(crate) fn verify(keys: &Keys<'_>, d: &Delivery<'_>) -> Result<Verified, Rejection> {
    let value = header(d.headers, HEADER)?.ok_or_else(|| Rejection::MissingSignature {
        header: HEADER.to_string(),
    })?;
    let sig = decode_base64(value)
        .filter(|s| s.len() == Algorithm::Sha1.output_len())
        .ok_or(Rejection::MalformedSignature {
            header: HEADER.to_string(),
            reason: "not a base64 HMAC-SHA1",
        })?;
    if d.url.is_empty() {
        return Err(Rejection::MissingUrl);
    }
    let body_hash = query_param(d.url, BODY_HASH);
    let content_type = d
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let signs_form =
        !(body_hash.is_some() || d.method.eq_ignore_ascii_case("GET") || is_json(content_type));
    // Counted (a linear scan, no allocation) before anything is decoded or MAC'd.
    let count = count_parameters(d.url, signs_form.then_some(d.body));
    if count > MAX_PARAMETERS {
        return Err(Rejection::TooManyParameters {
            count,
            limit: MAX_PARAMETERS,
        });
    }
    let params = if signs_form {
        form_params(d.body)
    } else {
        Vec::new()
    };
    let candidates = [sig];
    let signed_by = |params: &[Param<'_>], url: &str| {
        match_any(
            keys,
            Algorithm::Sha1,
            &candidates,
            &[signed_data(url, params).as_bytes()],
        )
    };
    // The URL as given with the parameters as decoded is what Twilio signs nearly every
    // time: tried first, before any other spelling is built.
    let index = signed_by(&params, d.url)
        .or_else(|| {
            let urls = url_variants(d.url);
            let others = || urls.iter().filter(|url| url.as_str() != d.url);
            others()
                .find_map(|url| signed_by(&params, url))
                .or_else(|| {
                    // Twilio encodes `+` as %2B; a hand-made body with a literal `+` (a phone
                    // number pasted as is) was most likely signed with the `+`, not with a
                    // space.
                    if params.is_empty() || !d.body.contains(&b'+') {
                        return None;
                    }
                    let literal_body = plus_as_literal(d.body);
                    let literal = form_params(&literal_body);
                    std::iter::once(d.url)
                        .chain(others().map(String::as_str))
                        .find_map(|url| signed_by(&literal, url))
                })
        })
        .ok_or(Rejection::SignatureMismatch {
            secrets: keys.len(),
        })?;
    if let Some(expected) = body_hash {
        let actual = sha256_hex(d.body);
        if !ct_eq(
            actual.as_bytes(),
            expected.trim().to_ascii_lowercase().as_bytes(),
        ) {
            return Err(Rejection::BodyHashMismatch);
        }
    }
    Ok(Verified {
        secret_index: index,
        timestamp: None,
    })
}

/// Query parameters of `url` plus the form parameters of `body` (when it is signed as
/// a form), counted as `form_urlencoded` yields them (non-empty `&`-separated pairs).
fn count_parameters(url: &str, body: Option<&[u8]>) -> usize {
    let query = split_query(url).map_or("", |(_, query, _)| query);
    let pairs = |bytes: &[u8]| {
        bytes
            .split(|&b| b == b'&')
            .filter(|p| !p.is_empty())
            .count()
    };
    pairs(query.as_bytes()) + body.map_or(0, pairs)
}

/// `url` with `bodySHA256=<hex sha256 of body>` appended, as Twilio calls it for a JSON body.
pub fn url_with_body_hash(url: &str, body: &[u8]) -> String {
    let (base, fragment) = match url.split_once('#') {
        Some((b, f)) => (b, Some(f)),
        None => (url, None),
    };
    let sep = if base.contains('?') { '&' } else { '?' };
    let mut out = format!("{base}{sep}{BODY_HASH}={}", sha256_hex(body));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

pub(crate) fn sign(
    secret: &str,
    input: &SignInput<'_>,
) -> Result<Vec<(String, String)>, SignError> {
    if input.url.is_empty() {
        return Err(SignError::MissingUrl(ProviderKind::Twilio));
    }
    let params = if is_json(Some(input.content_type)) {
        if query_param(input.url, BODY_HASH).is_none() {
            return Err(SignError::TwilioNeedsBodyHash(url_with_body_hash(
                input.url, input.body,
            )));
        }
        Vec::new()
    } else {
        form_params(input.body)
    };
    let data = signed_data(input.url, &params);
    let sig = encode_base64(&mac(Algorithm::Sha1, secret.as_bytes(), &[data.as_bytes()]));
    let mut out = vec![(HEADER.to_string(), sig)];
    if !input.id.is_empty() {
        out.push((
            "I-Twilio-Idempotency-Token".to_string(),
            input.id.to_string(),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The grouping before the fix: a linear scan of the groups per parameter.
    fn legacy_query_quadratic(url: &str) -> Option<String> {
        let (base, query, fragment) = split_query(url)?;
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match groups.iter_mut().find(|(name, _)| *name == k) {
                Some((_, values)) => values.push(v.into_owned()),
                None => groups.push((k.into_owned(), vec![v.into_owned()])),
            }
        }
        let encoded: Vec<String> = groups
            .iter()
            .flat_map(|(k, values)| {
                values
                    .iter()
                    .map(move |v| format!("{}={}", node_escape(k), node_escape(v)))
            })
            .collect();
        Some(format!("{base}?{}{fragment}", encoded.join("&")))
    }

    #[test]
    fn legacy_grouping_is_unchanged() {
        for url in [
            "https://h/p?b=1&a=2&b=3&c=%27x%27&a=4#frag",
            "https://h/p?x=1",
            "https://h/p?",
            "https://h/p?a&a=&=v&%zz=1&b=%2B",
        ] {
            assert_eq!(legacy_query(url), legacy_query_quadratic(url), "{url}");
        }
    }

    /// Work bound, not a stopwatch race: 100,000 distinct names cost the old grouping
    /// ~5 billion string comparisons (about 30 s in a debug build) and the map a
    /// few milliseconds; 5 s leaves a wide margin for a loaded machine.
    #[test]
    fn legacy_grouping_is_not_quadratic() {
        let query: Vec<String> = (0..100_000).map(|i| format!("p{i}=v")).collect();
        let url = format!("https://h/p?{}", query.join("&"));
        let started = std::time::Instant::now();
        let out = legacy_query(&url).expect("query");
        assert_eq!(out.len(), url.len());
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn parameters_are_counted_in_query_and_signed_form() {
        assert_eq!(count_parameters("https://h/p", None), 0);
        assert_eq!(count_parameters("https://h/p?a=1&&b=2#x&y", None), 2);
        assert_eq!(count_parameters("https://h/p?a=1", Some(b"x=1&y=2&")), 3);
    }
}
