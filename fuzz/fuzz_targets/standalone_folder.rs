//! Standalone mode's YAML folder loader over arbitrary text: no panic, and nothing it
//! keeps carries a name that could leave the state folder as a path.
#![no_main]

use std::path::Path;

use hookwarden::standalone::folder::{Folder, parse_file, validate_name, validate_namespace};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut folder = Folder::default();
    parse_file(&mut folder, Path::new("fuzz.yaml"), text.to_string());
    let mut visited = Vec::new();
    folder
        .each_integration(|key, integration| {
            let namespace = integration
                .metadata
                .namespace
                .as_deref()
                .unwrap_or_default();
            let name = integration.metadata.name.as_deref().unwrap_or_default();
            assert_eq!(key, format!("{namespace}/{name}"));
            assert!(validate_namespace("ns", namespace).is_ok(), "{key}");
            assert!(validate_name("name", name).is_ok(), "{key}");
            visited.push(key.to_string());
            Ok::<(), ()>(())
        })
        .expect("visit");
    // The second pass finds every integration the first one declared, once.
    visited.sort();
    assert!(visited.iter().eq(folder.integrations.keys()));
    for key in folder.secrets.keys() {
        let (namespace, name) = key.split_once('/').expect("ns/name");
        assert!(validate_namespace("ns", namespace).is_ok(), "{key}");
        assert!(validate_name("name", name).is_ok(), "{key}");
    }
});
