//! Twilio's URL and form handling: the URL variants (ports, query re-encodings), form
//! parameter parsing and `bodySHA256`. Anything Twilio (or `hookwarden send`) signs for a
//! URL and body must verify against that same URL, and arbitrary input must neither
//! panic nor cost more than linear work (libFuzzer's -timeout catches that).
#![no_main]

use arbitrary::Arbitrary;
use hookwarden::crd::ProviderKind;
use hookwarden::domain::signature::{
    Delivery, Scheme, SignInput, Verdict, sign, twilio_url_with_body_hash, verify,
};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    url: String,
    body: Vec<u8>,
    json: bool,
    get: bool,
    signature: String,
}

fn headers(pairs: &[(&str, &str)]) -> Option<http::HeaderMap> {
    let mut map = http::HeaderMap::new();
    for (n, v) in pairs {
        map.append(
            http::HeaderName::from_bytes(n.as_bytes()).ok()?,
            http::HeaderValue::from_str(v).ok()?,
        );
    }
    Some(map)
}

fuzz_target!(|input: Input| {
    let scheme = Scheme::preset(ProviderKind::Twilio);
    let content_type = if input.json {
        "application/json"
    } else {
        "application/x-www-form-urlencoded"
    };
    let method = if input.get { "GET" } else { "POST" };
    // Arbitrary signature header: no panic, whatever the URL.
    if let Some(map) = headers(&[
        ("X-Twilio-Signature", input.signature.as_str()),
        ("Content-Type", content_type),
    ]) {
        let d = Delivery {
            method,
            url: &input.url,
            headers: &map,
            body: &input.body,
        };
        let _ = verify(&scheme, &["token"], &d, 0);
    }

    // What Twilio signs verifies: form parameters, or a JSON body through bodySHA256.
    if input.url.is_empty() || input.url.contains("bodySHA256") {
        return;
    }
    let url = if input.json {
        twilio_url_with_body_hash(&input.url, &input.body)
    } else {
        input.url.clone()
    };
    let signed = sign(
        &scheme,
        "token",
        &SignInput {
            body: &input.body,
            url: &url,
            timestamp: 0,
            id: "",
            content_type,
        },
    )
    .expect("a URL and a secret are all Twilio needs");
    let Some(map) = headers(&[
        ("X-Twilio-Signature", signed[0].1.as_str()),
        ("Content-Type", content_type),
    ]) else {
        return;
    };
    let d = Delivery {
        method: "POST",
        url: &url,
        headers: &map,
        body: &input.body,
    };
    match verify(&scheme, &["token"], &d, 0) {
        Verdict::Valid(_) => {}
        Verdict::Invalid(r) => assert_eq!(r.code(), "too_many_parameters", "{url:?}: {r}"),
    }
});
