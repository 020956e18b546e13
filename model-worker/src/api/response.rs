//! The bodies of successful answers, one type per route, so what a client receives is
//! declared in one place (errors have theirs in `error`). Field order follows the
//! documentation of the API each route copies (OpenAI, TEI).

use serde::{Serialize, Serializer};

use super::FaultKind;

/// `POST /v1/embeddings`: OpenAI's list of embedding objects.
#[derive(Debug, Serialize)]
pub(super) struct EmbeddingList<'a> {
    /// Always `list`.
    pub object: &'static str,
    /// One object per input text, in input order.
    pub data: Vec<EmbeddingObject<'a>>,
    /// The served model's name.
    pub model: &'a str,
    /// Tokens the request used.
    pub usage: Usage,
}

/// One text's embedding.
#[derive(Debug, Serialize)]
pub(super) struct EmbeddingObject<'a> {
    /// Always `embedding`.
    pub object: &'static str,
    /// The text's position in the request.
    pub index: usize,
    /// The vector, as the request's `encoding_format` asked.
    pub embedding: EmbeddingValue<'a>,
}

/// An embedding as `encoding_format` asks: numbers, or base64 of little-endian f32.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(super) enum EmbeddingValue<'a> {
    /// `float`.
    #[serde(serialize_with = "floats_as_f64")]
    Float(&'a [f32]),
    /// `base64`.
    Base64(String),
}

/// Each f32 widened to f64 before printing, as this route has always answered (the
/// decimal expansion of the exact f32 value), so clients that compare numbers as f64 see
/// the same figures as before the response was typed. `/embed` prints f32 directly.
fn floats_as_f64<S: Serializer>(v: &[f32], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(v.iter().map(|&x| f64::from(x)))
}

/// OpenAI's token usage.
#[derive(Debug, Serialize)]
pub(super) struct Usage {
    /// Tokens over all input texts, `[CLS]` and `[SEP]` included.
    pub prompt_tokens: usize,
    /// The same: an embedding model generates none.
    pub total_tokens: usize,
}

/// `GET /v1/models`: OpenAI's list of models, here always one.
#[derive(Debug, Serialize)]
pub(super) struct ModelList<'a> {
    /// Always `list`.
    pub object: &'static str,
    /// The served model.
    pub data: [ModelCard<'a>; 1],
}

impl<'a> ModelList<'a> {
    /// The list holding the model named `id`.
    pub fn one(id: &'a str) -> Self {
        Self {
            object: "list",
            data: [ModelCard {
                id,
                object: "model",
                created: 0,
                owned_by: "vitals",
            }],
        }
    }
}

/// One model in [`ModelList`].
#[derive(Debug, Serialize)]
pub(super) struct ModelCard<'a> {
    /// The model's name (its folder's name).
    pub id: &'a str,
    /// Always `model`.
    pub object: &'static str,
    /// Unix time of creation; unknown, so 0.
    pub created: u64,
    /// Always `vitals`.
    pub owned_by: &'static str,
}

/// `GET /info`: the phase, the model (null fields until it has loaded) and the limits.
#[derive(Debug, Serialize)]
pub(super) struct InfoDocument<'a> {
    /// The model's name.
    pub model: &'a str,
    /// The worker's version.
    pub version: &'static str,
    /// The lifecycle phase (SPEC §1).
    pub phase: &'static str,
    /// The phase's detail (loading step, failure reason).
    pub detail: &'a str,
    /// Embedding width.
    pub dimension: Option<usize>,
    /// Tokens per text after truncation.
    pub max_tokens: Option<usize>,
    /// `mean` or `cls`.
    pub pooling: Option<&'static str>,
    /// Whether embeddings are L2-normalised by default.
    pub normalize: Option<bool>,
    /// `cpu` or `cuda:N`.
    pub device: Option<&'a str>,
    /// Threads, GPU and memory.
    pub device_detail: Option<&'a str>,
    /// `--max-batch-size`.
    pub max_batch_size: usize,
    /// `--max-batch-tokens`.
    pub max_batch_tokens: usize,
    /// `--max-queue`.
    pub max_queue: usize,
    /// `--max-inputs`.
    pub max_inputs: usize,
    /// `--max-request-chars`.
    pub max_request_chars: usize,
}

/// `GET /health` while serving.
#[derive(Debug, Serialize)]
pub(super) struct Health {
    /// Always `ok` (not serving is an error answer).
    pub status: &'static str,
}

/// `POST /debug/fault`: the fault taken.
#[derive(Debug, Serialize)]
pub(super) struct FaultTaken {
    /// The fault, as requested.
    pub fault: FaultKind,
}
