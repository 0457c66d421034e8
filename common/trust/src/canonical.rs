//! Canonical JSON: the exact bytes that signatures cover.
//!
//! The form is: object keys sorted by their UTF-8 bytes (serde_json's default `Map` is a
//! `BTreeMap`; the `preserve_order` feature must never be enabled in this workspace), no
//! whitespace, strings escaped the way serde_json does it, and numbers only as integers. Floats
//! are refused because their text form is not unique. When parsing, a key that appears twice in
//! one object is refused too: different JSON parsers keep different copies, and a signed document
//! must mean the same thing to every reader.

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Serialize;
use serde_json::{Map, Value};
use std::fmt;

use crate::TrustError;

/// Serializes `value` to canonical JSON bytes.
///
/// Fails with [`TrustError::Malformed`] when the value contains a float or does not serialize
/// to JSON (a map with non-string keys, for example).
pub fn to_canonical_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, TrustError> {
    let value =
        serde_json::to_value(value).map_err(|e| TrustError::malformed("document to sign", e))?;
    value_to_canonical(&value)
}

/// Parses arbitrary JSON and re-emits it in canonical form.
///
/// Refuses floats, duplicate keys and trailing data with [`TrustError::Malformed`].
pub fn canonicalize_json(bytes: &[u8]) -> Result<Vec<u8>, TrustError> {
    let value = parse_strict(bytes)?;
    value_to_canonical(&value)
}

/// Parses JSON into a [`Value`], refusing duplicate object keys and non-integer numbers.
pub(crate) fn parse_strict(bytes: &[u8]) -> Result<Value, TrustError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue
        .deserialize(&mut de)
        .map_err(|e| TrustError::malformed("JSON document", e))?;
    de.end()
        .map_err(|e| TrustError::malformed("JSON document", e))?;
    Ok(value)
}

/// Pretty JSON with sorted keys and a trailing newline: the human-readable file form of a
/// document whose canonical form is signed.
pub(crate) fn to_pretty_sorted<T: Serialize>(value: &T) -> Result<Vec<u8>, TrustError> {
    let value = serde_json::to_value(value).map_err(|e| TrustError::malformed("document", e))?;
    check_integers(&value)?;
    let mut out =
        serde_json::to_vec_pretty(&value).map_err(|e| TrustError::malformed("document", e))?;
    out.push(b'\n');
    Ok(out)
}

fn value_to_canonical(value: &Value) -> Result<Vec<u8>, TrustError> {
    check_integers(value)?;
    // `Value`'s objects are BTreeMaps, so serialization visits keys in sorted order, and the
    // compact writer adds no whitespace.
    serde_json::to_vec(value).map_err(|e| TrustError::malformed("document to sign", e))
}

fn check_integers(value: &Value) -> Result<(), TrustError> {
    match value {
        Value::Number(n) if !(n.is_i64() || n.is_u64()) => Err(TrustError::malformed(
            "document to sign",
            format!("number {n} is not an integer; signed documents allow integers only"),
        )),
        Value::Array(items) => items.iter().try_for_each(check_integers),
        Value::Object(map) => map.values().try_for_each(check_integers),
        _ => Ok(()),
    }
}

/// A `Value` deserializer that refuses duplicate keys and floats.
struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value with integer numbers and unique keys")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Err(E::custom(format!(
            "number {v} is not an integer; signed documents allow integers only"
        )))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(StrictValue)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(StrictValue)?;
            if out.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "duplicate key {key:?}; signed documents must have unique keys"
                )));
            }
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;
    use std::collections::HashMap;

    #[derive(Serialize)]
    struct Doc {
        zeta: u64,
        alpha: &'static str,
        nested: Nested,
    }

    #[derive(Serialize)]
    struct Nested {
        b: Vec<i64>,
        a: Option<u8>,
    }

    #[test]
    fn struct_keys_are_sorted_and_compact() {
        let doc = Doc {
            zeta: u64::MAX,
            alpha: "x y",
            nested: Nested {
                b: vec![-1, 2],
                a: None,
            },
        };
        let bytes = to_canonical_bytes(&doc).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"alpha":"x y","nested":{"a":null,"b":[-1,2]},"zeta":18446744073709551615}"#
        );
    }

    #[test]
    fn hashmap_order_does_not_matter() {
        let mut a = HashMap::new();
        for (i, k) in ["q", "b", "z", "a", "m"].iter().enumerate() {
            a.insert(*k, i);
        }
        let bytes = to_canonical_bytes(&a).unwrap();
        assert_eq!(bytes, br#"{"a":3,"b":1,"m":4,"q":0,"z":2}"#);
    }

    #[test]
    fn reformatting_gives_identical_bytes() {
        let pretty = b"{\n  \"b\" : [1, 2,\n 3],\n\t\"a\": {\"y\": \"\\u00e9\", \"x\": true}\n}\n";
        let compact = br#"{"a":{"x":true,"y":"\u00e9"},"b":[1,2,3]}"#;
        let c1 = canonicalize_json(pretty).unwrap();
        let c2 = canonicalize_json(compact).unwrap();
        assert_eq!(c1, c2);
        assert_eq!(
            c1,
            "{\"a\":{\"x\":true,\"y\":\"é\"},\"b\":[1,2,3]}".as_bytes()
        );
    }

    #[test]
    fn canonical_is_idempotent() {
        let once = canonicalize_json(br#"{"k":"a\"b\\c\n","n":[0,-5]}"#).unwrap();
        assert_eq!(canonicalize_json(&once).unwrap(), once);
    }

    #[test]
    fn floats_are_refused() {
        for bad in [
            &b"{\"a\":1.0}"[..],
            b"[1e3]",
            b"0.5",
            b"{\"a\":[{\"b\":-0.0}]}",
        ] {
            let err = canonicalize_json(bad).unwrap_err();
            assert!(matches!(err, TrustError::Malformed { .. }), "{err}");
        }
        #[derive(Serialize)]
        struct F {
            f: f32,
        }
        let err = to_canonical_bytes(&F { f: 1.5 }).unwrap_err();
        assert!(err.to_string().contains("not an integer"), "{err}");
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let err = canonicalize_json(br#"{"a":1,"b":{"c":1,"c":2}}"#).unwrap_err();
        assert!(err.to_string().contains("duplicate key \"c\""), "{err}");
    }

    #[test]
    fn trailing_data_and_garbage_are_refused() {
        assert!(canonicalize_json(b"{} {}").is_err());
        assert!(canonicalize_json(b"{").is_err());
        assert!(canonicalize_json(b"").is_err());
    }

    #[test]
    fn pretty_form_is_sorted_with_trailing_newline() {
        let out = to_pretty_sorted(&Nested {
            b: vec![1],
            a: Some(2),
        })
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("}\n"));
        assert!(text.find("\"a\"").unwrap() < text.find("\"b\"").unwrap());
    }
}
