//! JSON pointer lookup without allocation, and a document's top-level scalar fields read
//! without building its tree ([`TopLevel`]).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

/// [`Value::pointer`] (RFC 6901), with the same results, without its two `String`s per
/// reference token: serde_json unescapes every token with `replace("~1", "/")` and
/// `replace("~0", "~")`; here a token is borrowed unless it holds a `~`. The mappings
/// and the delivery id/type lookups run several pointers per delivery, which made the
/// unescaping the largest cost of a Datadog delivery after hashing (issue #21).
pub fn pointer<'a>(value: &'a Value, pointer: &str) -> Option<&'a Value> {
    if pointer.is_empty() {
        return Some(value);
    }
    let rest = pointer.strip_prefix('/')?;
    rest.split('/').try_fold(value, |target, raw| {
        let token: Cow<'_, str> = if raw.contains('~') {
            Cow::Owned(raw.replace("~1", "/").replace("~0", "~"))
        } else {
            Cow::Borrowed(raw)
        };
        match target {
            Value::Object(map) => map.get(token.as_ref()),
            Value::Array(list) => parse_index(&token).and_then(|i| list.get(i)),
            _ => None,
        }
    })
}

/// An array index as serde_json reads one: no sign, no leading zero.
fn parse_index(s: &str) -> Option<usize> {
    if s.starts_with('+') || (s.starts_with('0') && s.len() != 1) {
        return None;
    }
    s.parse().ok()
}

/// A field's value as the presets read it: text and numbers (and booleans) matter, any
/// other value only as "present but not a scalar". Borrowed from the body or the tree.
#[derive(Clone, Debug, PartialEq)]
pub enum Scalar<'a> {
    Str(Cow<'a, str>),
    Num(Number),
    Bool(bool),
    Null,
    /// An array or an object.
    Composite,
}

impl<'a> Scalar<'a> {
    /// The same reading of a value of a parsed tree.
    pub fn of(value: &'a Value) -> Scalar<'a> {
        match value {
            Value::String(s) => Scalar::Str(Cow::Borrowed(s)),
            Value::Number(n) => Scalar::Num(n.clone()),
            Value::Bool(b) => Scalar::Bool(*b),
            Value::Null => Scalar::Null,
            Value::Array(_) | Value::Object(_) => Scalar::Composite,
        }
    }

    /// The same value, its text borrowed from this one.
    pub fn borrowed(&self) -> Scalar<'_> {
        match self {
            Scalar::Str(s) => Scalar::Str(Cow::Borrowed(s)),
            Scalar::Num(n) => Scalar::Num(n.clone()),
            Scalar::Bool(b) => Scalar::Bool(*b),
            Scalar::Null => Scalar::Null,
            Scalar::Composite => Scalar::Composite,
        }
    }
}

/// Named top-level fields of a JSON document, read in one pass that validates the whole
/// document as [`serde_json::from_slice`] into a [`Value`] does but builds no tree: a
/// field not named is skipped, a named one is kept as a [`Scalar`] borrowed from the
/// body (copied only when its text has escapes). Like the tree, a key given twice keeps
/// its last value, and a document that is not an object has no fields.
///
/// The same documents are refused but one kind: arrays and objects nested more than 128
/// deep. The tree refuses those to bound its own recursion; skipped values are skipped
/// without recursion (serde_json's `IgnoredAny`, as the receiver's validation of bodies
/// it does not read always has), so they are valid JSON here.
///
/// For a mapping that reads only top-level fields (the Datadog preset: its payload is a
/// flat template), building the tree was most of a delivery's JSON cost: a `String` per
/// key and per value, the map's nodes, and a pointer walk per field (issue #21).
#[derive(Debug)]
pub struct TopLevel<'a> {
    names: &'static [&'static str],
    values: Vec<Option<Scalar<'a>>>,
}

impl<'a> TopLevel<'a> {
    /// Reads `bytes`, keeping the fields `names` lists.
    pub fn parse(bytes: &'a [u8], names: &'static [&'static str]) -> serde_json::Result<Self> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let values = ObjectSeed { names }.deserialize(&mut de)?;
        de.end()?;
        Ok(TopLevel { names, values })
    }

    /// The value of field `name`, if the document has it. `name` must be one of the names
    /// it was read with (a debug build panics otherwise: it would always be absent).
    pub fn get(&self, name: &str) -> Option<&Scalar<'a>> {
        let index = self.names.iter().position(|n| *n == name);
        debug_assert!(index.is_some(), "field {name:?} was not read");
        self.values.get(index?)?.as_ref()
    }
}

struct ObjectSeed {
    names: &'static [&'static str],
}

impl<'de> DeserializeSeed<'de> for ObjectSeed {
    type Value = Vec<Option<Scalar<'de>>>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed {
    type Value = Vec<Option<Scalar<'de>>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut values = vec![None; self.names.len()];
        while let Some(key) = map.next_key::<Key<'de>>()? {
            match self.names.iter().position(|n| *n == key.0.as_ref()) {
                Some(i) => values[i] = Some(map.next_value_seed(ScalarSeed)?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(values)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_seq(seq)?;
        Ok(Vec::new())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
}

/// A key, borrowed unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor).map(Key)
    }
}

struct StrVisitor;

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_string()))
    }
}

struct ScalarSeed;

impl<'de> DeserializeSeed<'de> for ScalarSeed {
    type Value = Scalar<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ScalarSeed {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(s)))
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(s.to_string())))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Num(n.into()))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Scalar::Num(n.into()))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
        // As the tree reads it: a float that is no JSON number is null.
        Ok(Number::from_f64(n).map_or(Scalar::Null, Scalar::Num))
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(b))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_seq(seq)?;
        Ok(Scalar::Composite)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        IgnoredAny.visit_map(map)?;
        Ok(Scalar::Composite)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_serde_json_on_every_kind_of_pointer() {
        let doc = serde_json::json!({
            "a": {"b": [10, {"c": "deep"}, 30]},
            "a/b": 1, "m~n": 2, "~1": 3, "": {"": 4}, "0": "zero",
            "list": ["x", "y"], "s": "text",
        });
        let pointers = [
            "",
            "/",
            "/a",
            "/a/b",
            "/a/b/0",
            "/a/b/1/c",
            "/a/b/2",
            "/a/b/3",
            "/a/b/01",
            "/a/b/+1",
            "/a/b/-1",
            "/a/b/1/c/x",
            "/a~1b",
            "/m~0n",
            "/~01",
            "/~1",
            "//",
            "/0",
            "/list/1",
            "/list/00",
            "/s/0",
            "a",
            "/missing",
            "/a/missing/c",
            "/~2",
            "/a/b/18446744073709551616",
        ];
        for p in pointers {
            assert_eq!(pointer(&doc, p), doc.pointer(p), "pointer {p:?}");
        }
    }

    #[test]
    fn top_level_fields_agree_with_the_tree_and_refuse_what_it_refuses() {
        const NAMES: &[&str] = &["id", "date", "x", ""];
        let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let mut docs: Vec<String> = [
            r#"{"id": "a", "date": 12, "other": "skipped"}"#,
            r#"{"id": "first", "id": "last"}"#,
            r#"{"\u0069d": "escaped key", "x": "tab\tand \u00e9"}"#,
            r#"{"id": 1.5, "date": -3, "x": {"id": "nested"}}"#,
            r#"{"id": [1, {"a": 2}], "date": {"a": [1]}, "x": null}"#,
            r#"{"id": true, "date": false, "": "empty key"}"#,
            r#"{"id": 18446744073709551616, "date": -9223372036854775809, "x": 1e308}"#,
            r#"  {"id": "a"}  "#,
            r#"{"ID": "case differs", "id ": "space"}"#,
            "{}",
            "[]",
            r#"[{"id": "in a list"}]"#,
            "1",
            r#""text""#,
            "null",
            "true",
            // Refused by both:
            "",
            "   ",
            r#"{"id": }"#,
            r#"{"id": "a"} trailing"#,
            r#"{"id": "a"}{}"#,
            r#"{"a": 1,}"#,
            "[1,]",
            r#"{"id": "\ud800"}"#,
            r#"{"id": "a", "x": 1e400}"#,
            r#"{"id": "unterminated}"#,
            "{\"id\": \"raw\u{1}control\"}",
            r#"{"id": 01}"#,
            r#"{id: "a"}"#,
        ]
        .into_iter()
        .map(str::to_string)
        .collect();
        // At, and past, serde_json's nesting limit, at the top and under a skipped key.
        for depth in [126, 127, 128, 129] {
            docs.push(nested(depth));
            docs.push(format!(r#"{{"skipped": {}}}"#, nested(depth)));
            docs.push(format!(r#"{{"id": {}}}"#, nested(depth)));
        }
        for doc in &docs {
            let tree = serde_json::from_slice::<Value>(doc.as_bytes());
            let top = TopLevel::parse(doc.as_bytes(), NAMES);
            let too_deep_for_the_tree = tree
                .as_ref()
                .is_err_and(|e| e.to_string().starts_with("recursion limit exceeded"));
            assert_eq!(
                top.is_ok(),
                tree.is_ok() || too_deep_for_the_tree,
                "{doc:?}: {top:?} / {tree:?}"
            );
            if let (Ok(top), Ok(tree)) = (top, tree) {
                for name in NAMES {
                    assert_eq!(
                        top.get(name),
                        tree.get(name).map(Scalar::of).as_ref(),
                        "{doc:?} field {name:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn top_level_text_is_borrowed_from_the_body_unless_escaped() {
        let top =
            TopLevel::parse(br#"{"id": "plain", "x": "new\nline"}"#, &["id", "x"]).expect("JSON");
        assert!(matches!(
            top.get("id"),
            Some(Scalar::Str(Cow::Borrowed("plain")))
        ));
        assert!(matches!(top.get("x"), Some(Scalar::Str(Cow::Owned(s))) if s == "new\nline"));
    }
}
