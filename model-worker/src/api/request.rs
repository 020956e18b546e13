//! The request bodies as typed structs decoded by serde, and the one place that turns a
//! body serde refuses into the OpenAI-style 400 naming the field at fault.
//!
//! Unknown fields are ignored: OpenAI clients send fields this server has no use for.

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::ApiError;

/// Texts as OpenAI's `input` and TEI's `inputs` carry them. Token ids decode (OpenAI
/// defines them) so that they can be refused as unsupported rather than as malformed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Input {
    /// One text.
    Text(String),
    /// Several texts (possibly none, which is refused).
    Texts(Vec<String>),
    /// One text as token ids.
    Tokens(Vec<u32>),
    /// Several texts as token ids.
    TokenLists(Vec<Vec<u32>>),
}

impl Input {
    /// The texts to embed; `field` names the field in errors.
    pub fn into_texts(self, field: &'static str) -> Result<Vec<String>, ApiError> {
        match self {
            Self::Text(text) => Ok(vec![text]),
            Self::Texts(texts) if texts.is_empty() => Err(ApiError::EmptyInput { field }),
            Self::Texts(texts) => Ok(texts),
            Self::Tokens(_) | Self::TokenLists(_) => Err(ApiError::UnsupportedInput { field }),
        }
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
    /// The texts.
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
    /// The texts.
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
    /// Which fault.
    pub kind: FaultKind,
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

/// A request body: decoded by serde, and able to say which field made decoding fail.
pub trait Body: DeserializeOwned {
    /// The error naming the field of `body` that does not decode, if one does not.
    fn fault(body: &Map<String, Value>) -> Option<ApiError>;
}

impl Body for OpenAiRequest {
    fn fault(body: &Map<String, Value>) -> Option<ApiError> {
        input_fault(body, "input")
            .or_else(|| param_fault::<Option<EncodingFormat>>(body, "encoding_format"))
            .or_else(|| param_fault::<Option<u32>>(body, "dimensions"))
            .or_else(|| param_fault::<Option<String>>(body, "model"))
            .or_else(|| param_fault::<Option<String>>(body, "user"))
    }
}

impl Body for TeiRequest {
    fn fault(body: &Map<String, Value>) -> Option<ApiError> {
        input_fault(body, "inputs")
            .or_else(|| param_fault::<Option<bool>>(body, "normalize"))
            .or_else(|| param_fault::<Option<bool>>(body, "truncate"))
    }
}

impl Body for FaultRequest {
    fn fault(body: &Map<String, Value>) -> Option<ApiError> {
        match body.get("kind") {
            None | Some(Value::Null) => Some(ApiError::MissingField { field: "kind" }),
            Some(_) => param_fault::<FaultKind>(body, "kind"),
        }
    }
}

/// Decodes a JSON object body into `T`. Only when serde refuses it is the body read
/// again, untyped, to tell malformed JSON from a field at fault and to name that field:
/// serde's own error says neither which field nor, for an untagged enum ("data did not
/// match any variant"), what is wrong, and serde_json classes some type errors as syntax.
pub fn decode<T: Body>(bytes: &[u8]) -> Result<T, ApiError> {
    let refused = match serde_json::from_slice::<Object<T>>(bytes) {
        Ok(Object(request)) => return Ok(request),
        Err(e) => e,
    };
    let blamed = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(body)) => T::fault(&body),
        Ok(_) => None,
        Err(syntax) => return Err(ApiError::InvalidJson(syntax.to_string())),
    };
    // Also a duplicate field, or anything else no single field explains.
    Err(blamed.unwrap_or_else(|| ApiError::InvalidJson(refused.to_string())))
}

/// `MissingField` when `body[field]` is absent or null; otherwise `InvalidInput`, or
/// `UnsupportedInput` for what looks like token ids, when it is not an [`Input`].
fn input_fault(body: &Map<String, Value>, field: &'static str) -> Option<ApiError> {
    let value = match body.get(field) {
        None | Some(Value::Null) => return Some(ApiError::MissingField { field }),
        Some(value) => value,
    };
    if Input::deserialize(value).is_ok() {
        return None;
    }
    Some(match value {
        Value::Array(items) if items.iter().any(|i| i.is_number() || i.is_array()) => {
            ApiError::UnsupportedInput { field }
        }
        _ => ApiError::InvalidInput { field },
    })
}

/// `InvalidParameter` with serde's reason when `body[param]` is present and not a `T`.
fn param_fault<T: DeserializeOwned>(
    body: &Map<String, Value>,
    param: &'static str,
) -> Option<ApiError> {
    let refused = T::deserialize(body.get(param)?).err()?;
    Some(ApiError::InvalidParameter {
        param,
        reason: refused.to_string(),
    })
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

    /// (code, param) of the error `body` gets at `POST /v1/embeddings`, after decoding
    /// and turning the input into texts.
    fn openai_error(body: &str) -> (&'static str, Option<&'static str>) {
        let e = openai(body)
            .and_then(|r| r.input.into_texts("input"))
            .expect_err(body);
        (e.code(), e.param())
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
        let r = openai(r#"{"input":[1,2]}"#).expect("token ids decode");
        assert_eq!(r.input, Input::Tokens(vec![1, 2]));
        let r = openai(r#"{"input":[[1],[]]}"#).expect("token lists decode");
        assert_eq!(r.input, Input::TokenLists(vec![vec![1], vec![]]));
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
            (r#"{"input":42}"#, "invalid_input"),
            (r#"{"input":true}"#, "invalid_input"),
            (r#"{"input":{"text":"a"}}"#, "invalid_input"),
            (r#"{"input":["a",null]}"#, "invalid_input"),
            (r#"{"input":["a",{}]}"#, "invalid_input"),
        ] {
            assert_eq!(openai_error(body), (code, input), "{body}");
        }
        let e = decode::<TeiRequest>(br#"{"input":"a"}"#).expect_err("TEI names `inputs`");
        assert_eq!((e.code(), e.param()), ("missing_field", Some("inputs")));
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
        ] {
            assert_eq!(openai_error(body), ("invalid_json", None), "{body}");
        }
        // Two values for one field: no single field is at fault.
        assert_eq!(
            openai_error(r#"{"input":"a","input":"b"}"#),
            ("invalid_json", None)
        );
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
            (r#"{"input":"a","model":5}"#, "model"),
            (r#"{"input":"a","user":[]}"#, "user"),
        ] {
            assert_eq!(
                openai_error(body),
                ("invalid_parameter", Some(param)),
                "{body}"
            );
        }
        let e = openai(r#"{"input":"a","encoding_format":"hex"}"#).expect_err("hex");
        assert!(e.to_string().contains("`float` or `base64`"), "{e}");

        let r: TeiRequest = decode(br#"{"inputs":"a","truncate":true}"#).expect("valid");
        assert_eq!((r.normalize, r.truncate), (None, Some(true)));
        let e = decode::<TeiRequest>(br#"{"inputs":"a","normalize":"yes"}"#).expect_err("yes");
        assert_eq!(
            (e.code(), e.param()),
            ("invalid_parameter", Some("normalize"))
        );
    }

    #[test]
    fn fault_kinds() {
        let r: FaultRequest = decode(br#"{"kind":"stop_heartbeats"}"#).expect("valid");
        assert_eq!(r.kind, FaultKind::StopHeartbeats);
        let e = decode::<FaultRequest>(br#"{"kind":"nope"}"#).expect_err("nope");
        assert_eq!((e.code(), e.param()), ("invalid_parameter", Some("kind")));
        assert!(e.to_string().contains("hang_loop"), "{e}");
        let e = decode::<FaultRequest>(b"{}").expect_err("no kind");
        assert_eq!((e.code(), e.param()), ("missing_field", Some("kind")));
    }
}
