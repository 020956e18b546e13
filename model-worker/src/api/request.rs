//! The request bodies as typed structs decoded by serde, and the one place that turns a
//! body serde refuses into the OpenAI-style 400 naming the field at fault (its path, from
//! `serde_path_to_error`).
//!
//! Unknown fields are ignored, not refused: OpenAI's API accepts fields it does not use
//! and clients send them (newer parameters, vendor extensions).
//! Required fields decode when absent (as [`Input::Absent`], `None`) so that their
//! accessors refuse them as `missing_field` naming the field; serde's own refusal of a
//! missing field names it only in prose.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::error::Category;
use serde_json::Value;
use serde_path_to_error::Segment;

use super::ApiError;

/// The texts field (OpenAI's `input`, TEI's `inputs`) as sent. Every JSON value decodes,
/// so that [`Input::into_texts`] is the one place that says what is wrong with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Input {
    /// The field is absent or null.
    #[default]
    Absent,
    /// One text.
    Text(String),
    /// Several texts (possibly none, which is refused).
    Texts(Vec<String>),
    /// An array holding numbers or arrays: token ids, which OpenAI defines and this
    /// server refuses as unsupported rather than as malformed.
    TokenIds,
    /// Anything else: a number, a boolean, an object, an array holding them or null.
    Malformed,
}

impl Input {
    /// The texts to embed; `field` names the field in errors.
    pub fn into_texts(self, field: &'static str) -> Result<Vec<String>, ApiError> {
        match self {
            Self::Absent => Err(ApiError::MissingField { field }),
            Self::Text(text) => Ok(vec![text]),
            Self::Texts(texts) if texts.is_empty() => Err(ApiError::EmptyInput { field }),
            Self::Texts(texts) => Ok(texts),
            Self::TokenIds => Err(ApiError::UnsupportedInput { field }),
            Self::Malformed => Err(ApiError::InvalidInput { field }),
        }
    }
}

impl<'de> Deserialize<'de> for Input {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // The field's value is read once and its strings moved into the texts.
        Ok(match Value::deserialize(deserializer)? {
            Value::Null => Self::Absent,
            Value::String(text) => Self::Text(text),
            Value::Array(items) if items.iter().any(|i| i.is_number() || i.is_array()) => {
                Self::TokenIds
            }
            Value::Array(items) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(text) => Some(text),
                    _ => None,
                })
                .collect::<Option<_>>()
                .map_or(Self::Malformed, Self::Texts),
            Value::Bool(_) | Value::Number(_) | Value::Object(_) => Self::Malformed,
        })
    }
}

/// `encoding_format` of `POST /v1/embeddings`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    /// JSON arrays of numbers.
    #[default]
    Float,
    /// Base64 of the little-endian `f32` bytes.
    Base64,
}

/// `POST /v1/embeddings`, as OpenAI defines it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OpenAiRequest {
    /// The texts (required: [`Input::into_texts`] refuses them absent).
    #[serde(default)]
    pub input: Input,
    /// The model asked for; not checked, since the worker serves one model whatever
    /// name a client is configured with.
    pub model: Option<String>,
    /// How to encode the vectors (default `float`).
    pub encoding_format: Option<EncodingFormat>,
    /// A shorter width; refused, since the model has one width.
    pub dimensions: Option<u32>,
    /// An end-user id for abuse tracking; accepted and not used.
    pub user: Option<String>,
}

/// `POST /embed`, as text-embeddings-inference defines it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TeiRequest {
    /// The texts (required: [`Input::into_texts`] refuses them absent).
    #[serde(default)]
    pub inputs: Input,
    /// L2-normalise the vectors (default true).
    pub normalize: Option<bool>,
    /// Truncate texts longer than the model's window instead of refusing them
    /// (default false).
    pub truncate: Option<bool>,
}

/// `POST /debug/fault`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FaultRequest {
    /// Which fault; required, read through [`FaultRequest::kind`].
    kind: Option<FaultKind>,
}

impl FaultRequest {
    /// Which fault; `MissingField` when `kind` is absent or null.
    pub fn kind(&self) -> Result<FaultKind, ApiError> {
        self.kind.ok_or(ApiError::MissingField { field: "kind" })
    }
}

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The model loop stops ticking and answering.
    HangLoop,
    /// The reporter stops sending heartbeats.
    StopHeartbeats,
    /// The worker turns `failed`.
    Fail,
    /// The process aborts.
    Crash,
}

/// Decodes a JSON object body into `T`. A value serde refuses inside a field of a JSON
/// body is `InvalidParameter` naming the field's path; anything else refused (not JSON,
/// not an object, trailing data, a field given twice) is `InvalidJson`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let Object(request) = serde_path_to_error::deserialize(&mut json).map_err(|refused| {
        let in_field = matches!(refused.path().iter().next(), Some(Segment::Map { .. }));
        let param = refused.path().to_string();
        let refused = refused.into_inner();
        // A syntax error inside a field is the body's fault, not the field's; but
        // serde_json also reports some type errors as syntax (a number where an enum
        // belongs), so a body that is JSON after all blames the field.
        let body_is_json = refused.classify() == Category::Data
            || serde_json::from_slice::<IgnoredAny>(bytes).is_ok();
        if in_field && body_is_json {
            ApiError::InvalidParameter {
                param,
                reason: refused.to_string(),
            }
        } else {
            ApiError::InvalidJson(refused.to_string())
        }
    })?;
    json.end()
        .map_err(|trailing| ApiError::InvalidJson(trailing.to_string()))?;
    Ok(request)
}

/// `T` decoded from a JSON object only: serde's derived structs also accept an array of
/// the fields in order, which these APIs do not define.
struct Object<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = T;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }

        deserializer
            .deserialize_map(ObjectVisitor(PhantomData))
            .map(Object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn openai(body: &str) -> Result<OpenAiRequest, ApiError> {
        decode(body.as_bytes())
    }

    /// (code, param) of `error`, as the response's `error.code` and `error.param` show them.
    fn code_and_param(error: &ApiError) -> (&'static str, Option<&str>) {
        (error.code(), error.param())
    }

    /// The error `body` gets at `POST /v1/embeddings`, after decoding and turning the
    /// input into texts.
    fn openai_error(body: &str) -> ApiError {
        openai(body)
            .and_then(|r| r.input.into_texts("input"))
            .expect_err(body)
    }

    #[test]
    fn inputs_decode_to_texts() {
        let texts = |body: &str| {
            openai(body)
                .and_then(|r| r.input.into_texts("input"))
                .expect(body)
        };
        assert_eq!(texts(r#"{"input":"a"}"#), ["a"]);
        assert_eq!(texts(r#"{"input":["a",""]}"#), ["a", ""]);
        for body in [r#"{"input":[1,2]}"#, r#"{"input":[[1],[]]}"#] {
            let r = openai(body).expect("token ids decode");
            assert_eq!(r.input, Input::TokenIds, "{body}");
        }
    }

    #[test]
    fn bad_inputs_name_the_field_and_what_is_wrong() {
        let input = Some("input");
        for (body, code) in [
            (r#"{"model":"m"}"#, "missing_field"),
            (r#"{"input":null}"#, "missing_field"),
            (r#"{"input":[]}"#, "empty_input"),
            (r#"{"input":[1,2,3]}"#, "unsupported_input"),
            (r#"{"input":[[1,2,3]]}"#, "unsupported_input"),
            (r#"{"input":[-1]}"#, "unsupported_input"),
            (r#"{"input":[1.5]}"#, "unsupported_input"),
            (r#"{"input":["a",1]}"#, "unsupported_input"),
            (r#"{"input":[null,1]}"#, "unsupported_input"),
            (r#"{"input":42}"#, "invalid_input"),
            (r#"{"input":true}"#, "invalid_input"),
            (r#"{"input":{"text":"a"}}"#, "invalid_input"),
            (r#"{"input":["a",null]}"#, "invalid_input"),
            (r#"{"input":["a",{}]}"#, "invalid_input"),
        ] {
            assert_eq!(code_and_param(&openai_error(body)), (code, input), "{body}");
        }
        let e = decode::<TeiRequest>(br#"{"input":"a"}"#)
            .and_then(|r| r.inputs.into_texts("inputs"))
            .expect_err("TEI names `inputs`");
        assert_eq!(code_and_param(&e), ("missing_field", Some("inputs")));
    }

    #[test]
    fn bodies_that_are_not_json_objects_are_invalid_json() {
        for body in [
            "{not json",
            "",
            "[1,2]",
            r#"["a",null,null,null,null]"#,
            "\"a\"",
            "{} x",
            r#"{"input":"a"} {}"#,
            // Broken inside a field: the body's fault, not the field's.
            r#"{"input":["a""#,
        ] {
            let e = openai_error(body);
            assert_eq!(code_and_param(&e), ("invalid_json", None), "{body}");
        }
        // Two values for one field: no single value is at fault.
        let e = openai_error(r#"{"input":"a","input":"b"}"#);
        assert_eq!(code_and_param(&e), ("invalid_json", None));
    }

    #[test]
    fn parameters_are_typed() {
        let r = openai(
            r#"{"input":"a","model":"m","encoding_format":"base64","dimensions":8,"user":"u","extra":[1]}"#,
        )
        .expect("valid, with an unknown field");
        assert_eq!(r.encoding_format, Some(EncodingFormat::Base64));
        assert_eq!(r.dimensions, Some(8));
        let r = openai(r#"{"input":"a","encoding_format":null}"#).expect("null is absent");
        assert_eq!(r.encoding_format, None);
        for (body, param) in [
            (
                r#"{"input":"a","encoding_format":"hex"}"#,
                "encoding_format",
            ),
            (r#"{"input":"a","encoding_format":1}"#, "encoding_format"),
            (r#"{"input":"a","dimensions":-1}"#, "dimensions"),
            (r#"{"input":"a","dimensions":"8"}"#, "dimensions"),
            (r#"{"input":"a","dimensions":1e999}"#, "dimensions"),
            (r#"{"input":"a","model":5}"#, "model"),
            (r#"{"input":"a","user":[]}"#, "user"),
            // The field serde refuses first, in the body's order.
            (r#"{"dimensions":"8","input":42}"#, "dimensions"),
        ] {
            let e = openai_error(body);
            assert_eq!(
                code_and_param(&e),
                ("invalid_parameter", Some(param)),
                "{body}"
            );
            assert!(
                e.to_string().starts_with(&format!("invalid `{param}`: ")),
                "{e}"
            );
        }
        let e = openai_error(r#"{"input":"a","encoding_format":"hex"}"#);
        assert!(e.to_string().contains("`float` or `base64`"), "{e}");

        let r: TeiRequest = decode(br#"{"inputs":"a","truncate":true}"#).expect("valid");
        assert_eq!((r.normalize, r.truncate), (None, Some(true)));
        let e = decode::<TeiRequest>(br#"{"inputs":"a","normalize":"yes"}"#).expect_err("yes");
        assert_eq!(code_and_param(&e), ("invalid_parameter", Some("normalize")));
    }

    #[test]
    fn fault_kinds() {
        let fault = |body: &str| decode::<FaultRequest>(body.as_bytes())?.kind();
        assert_eq!(
            fault(r#"{"kind":"stop_heartbeats"}"#).expect("valid"),
            FaultKind::StopHeartbeats
        );
        let e = fault(r#"{"kind":"nope"}"#).expect_err("nope");
        assert_eq!(code_and_param(&e), ("invalid_parameter", Some("kind")));
        assert!(e.to_string().contains("hang_loop"), "{e}");
        for body in ["{}", r#"{"kind":null}"#] {
            let e = fault(body).expect_err(body);
            assert_eq!(
                code_and_param(&e),
                ("missing_field", Some("kind")),
                "{body}"
            );
        }
    }
}
