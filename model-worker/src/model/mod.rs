//! The model behind the server: the [`Embedder`] trait the inference loop drives, the
//! model folder's description ([`ModelSpec`]), tokenisation, and the errors of both.
//!
//! The loop only sees [`Embedder`], so batching and lifecycle tests run with a fake model
//! and the real candle BERT lives in [`bert`]. Tokenisation ([`tokenizer`]) is separate from
//! the model because it runs on the HTTP side, off the model thread.

pub mod bert;
pub mod device;
pub mod encoder;
pub mod tokenizer;

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Computes embeddings for batches of token sequences; owned by the model thread.
pub trait Embedder: Send {
    /// Length of each embedding vector.
    fn dimension(&self) -> usize;

    /// How a batch's size grows with its texts, which the batch loop counts against
    /// `--max-batch-tokens`.
    fn batch_cost(&self) -> BatchCost;

    /// One pooled embedding per sequence, in order, before any L2 normalisation (the
    /// caller decides, per request, whether to normalise). Each sequence holds the
    /// tokenizer's ids including special tokens, already truncated.
    fn embed(&mut self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError>;
}

/// How a forward pass's size grows with its texts: what a batch counts as against
/// `--max-batch-tokens`, and so how many texts share a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchCost {
    /// Texts laid end to end without padding (the CPU encoder): the sum of their lengths.
    Packed,
    /// Texts padded to the batch's longest (a device's attention): rows × longest.
    Padded,
}

impl BatchCost {
    /// The tokens a batch of `rows` texts counts as, `longest` the longest text's tokens and
    /// `total` the tokens of all of them.
    pub fn tokens(self, rows: usize, longest: usize, total: usize) -> usize {
        match self {
            BatchCost::Packed => total,
            BatchCost::Padded => rows.saturating_mul(longest),
        }
    }
}

/// How token vectors become one sentence vector (from `1_Pooling/config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the tokens whose attention mask is 1 (special tokens included).
    Mean,
    /// The first token's (`[CLS]`) vector.
    Cls,
}

impl Pooling {
    /// The name shown in `/info`.
    pub fn as_str(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
        }
    }
}

/// What the sentence-transformers files of a model folder say, read before any weights.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// The folder the files come from.
    pub dir: PathBuf,
    /// The model's name as clients see it: the folder's last component.
    pub name: String,
    /// Tokens per text after truncation, special tokens included.
    pub max_seq_length: usize,
    /// Pooling strategy.
    pub pooling: Pooling,
    /// Whether the pipeline ends in a `Normalize` module (L2 normalisation by default).
    pub normalize: bool,
    /// Embedding width.
    pub dimension: usize,
}

/// Why the model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A required file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file of the model folder is malformed.
    #[error("invalid {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The model folder asks for something this server does not implement.
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// The tokenizer could not be loaded or configured.
    #[error("tokenizer: {0}")]
    Tokenizer(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A candle error: corrupt weights, a shape mismatch, a device failure.
    #[error("{context}: {source}")]
    Candle {
        /// What was being done.
        context: &'static str,
        /// The candle error.
        #[source]
        source: candle_core::Error,
    },
    /// The device could not be opened.
    #[error(transparent)]
    Device(#[from] device::DeviceError),
    /// Loading was interrupted by shutdown.
    #[error("loading interrupted by shutdown")]
    Interrupted,
}

impl ModelError {
    /// Wraps a candle error with what was being done.
    pub fn candle(context: &'static str) -> impl FnOnce(candle_core::Error) -> Self {
        move |source| ModelError::Candle { context, source }
    }
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: usize,
}

#[derive(Deserialize)]
struct PoolingConfig {
    word_embedding_dimension: usize,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

/// Reads a JSON file of the model folder.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ModelError> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|source| ModelError::Json {
        path: path.to_owned(),
        source,
    })
}

impl ModelSpec {
    /// Reads `modules.json`, the pooling config and `sentence_bert_config.json`.
    pub fn read(dir: &Path) -> Result<Self, ModelError> {
        let modules: Vec<ModuleEntry> = read_json(&dir.join("modules.json"))?;
        let pooling_dir = modules
            .iter()
            .find(|m| m.kind.ends_with(".Pooling"))
            .map(|m| m.path.clone())
            .ok_or_else(|| ModelError::Unsupported("modules.json has no Pooling module".into()))?;
        let normalize = modules.iter().any(|m| m.kind.ends_with(".Normalize"));
        if let Some(other) = modules.iter().find(|m| {
            !(m.kind.ends_with(".Transformer")
                || m.kind.ends_with(".Pooling")
                || m.kind.ends_with(".Normalize"))
        }) {
            return Err(ModelError::Unsupported(format!(
                "module {} in modules.json",
                other.kind
            )));
        }
        let pool: PoolingConfig = read_json(&dir.join(pooling_dir).join("config.json"))?;
        let pooling = match (
            pool.pooling_mode_mean_tokens,
            pool.pooling_mode_cls_token,
            pool.pooling_mode_max_tokens || pool.pooling_mode_mean_sqrt_len_tokens,
        ) {
            (true, false, false) => Pooling::Mean,
            (false, true, false) => Pooling::Cls,
            _ => {
                return Err(ModelError::Unsupported(
                    "pooling must be exactly one of mean tokens or CLS token".into(),
                ))
            }
        };
        let sbert: SentenceBertConfig = read_json(&dir.join("sentence_bert_config.json"))?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".to_owned());
        Ok(Self {
            dir: dir.to_owned(),
            name,
            max_seq_length: sbert.max_seq_length,
            pooling,
            normalize,
            dimension: pool.word_embedding_dimension,
        })
    }
}

/// Scales `v` to unit L2 norm as sentence-transformers does (norm clamped at 1e-12).
pub fn l2_normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    for x in v {
        *x /= norm;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, rel: &str, body: &str) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
        std::fs::write(path, body).expect("write");
    }

    fn folder(pooling: &str, modules: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "modules.json", modules);
        write(dir.path(), "1_Pooling/config.json", pooling);
        write(
            dir.path(),
            "sentence_bert_config.json",
            r#"{"max_seq_length": 128}"#,
        );
        dir
    }

    const MODULES: &str = r#"[{"type":"sentence_transformers.models.Transformer","path":""},
        {"type":"sentence_transformers.models.Pooling","path":"1_Pooling"},
        {"type":"sentence_transformers.models.Normalize","path":"2_Normalize"}]"#;

    #[test]
    fn reads_mean_pooling_and_normalize() {
        let dir = folder(
            r#"{"word_embedding_dimension":8,"pooling_mode_mean_tokens":true}"#,
            MODULES,
        );
        let spec = ModelSpec::read(dir.path()).expect("valid");
        assert_eq!(spec.pooling, Pooling::Mean);
        assert!(spec.normalize);
        assert_eq!(spec.max_seq_length, 128);
        assert_eq!(spec.dimension, 8);
    }

    #[test]
    fn reads_cls_pooling_without_normalize() {
        let dir = folder(
            r#"{"word_embedding_dimension":8,"pooling_mode_cls_token":true}"#,
            r#"[{"type":"sentence_transformers.models.Transformer","path":""},
                {"type":"sentence_transformers.models.Pooling","path":"1_Pooling"}]"#,
        );
        let spec = ModelSpec::read(dir.path()).expect("valid");
        assert_eq!(spec.pooling, Pooling::Cls);
        assert!(!spec.normalize);
    }

    #[test]
    fn rejects_max_pooling_and_missing_files() {
        let dir = folder(
            r#"{"word_embedding_dimension":8,"pooling_mode_max_tokens":true}"#,
            MODULES,
        );
        assert!(matches!(
            ModelSpec::read(dir.path()),
            Err(ModelError::Unsupported(_))
        ));
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            ModelSpec::read(empty.path()),
            Err(ModelError::Read { .. })
        ));
    }

    #[test]
    fn normalizes_to_unit_length_and_keeps_zero() {
        let mut v = [3.0, 4.0];
        l2_normalize(&mut v);
        assert_eq!(v, [0.6, 0.8]);
        let mut z = [0.0, 0.0];
        l2_normalize(&mut z);
        assert_eq!(z, [0.0, 0.0]);
    }
}
