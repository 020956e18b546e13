//! Text to token ids, configured to match sentence-transformers.
//!
//! The shipped `tokenizer.json` of all-MiniLM-L6-v2 pads every text to 128 and truncates
//! at 128 (see shared/MODEL.md): both are overridden here. Texts are tokenised one by one
//! without padding; the encoder packs them (CPU) or pads each length group (device). This runs on
//! the HTTP side (a blocking task), never on the model thread.

use std::path::Path;
use std::sync::Arc;

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::ModelError;

/// One tokenised text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// Token ids including `[CLS]` and `[SEP]`, at most the model's maximum.
    pub ids: Vec<u32>,
    /// Whether truncation dropped tokens.
    pub truncated: bool,
}

/// A cheaply clonable tokenizer that truncates at the model's maximum length.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Arc<Tokenizer>,
    max_len: usize,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json` from `dir`, truncating at `max_len` tokens and not padding.
    pub fn load(dir: &Path, max_len: usize) -> Result<Self, ModelError> {
        let path = dir.join("tokenizer.json");
        let bytes = std::fs::read(&path).map_err(|source| ModelError::Read { path, source })?;
        let mut tokenizer = Tokenizer::from_bytes(bytes).map_err(ModelError::Tokenizer)?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(ModelError::Tokenizer)?;
        tokenizer.with_padding(None);
        Ok(Self {
            inner: Arc::new(tokenizer),
            max_len,
        })
    }

    /// Tokens per text after truncation, special tokens included.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Tokenises one text with special tokens.
    pub fn encode(&self, text: &str) -> Result<Tokens, ModelError> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(ModelError::Tokenizer)?;
        Ok(Tokens {
            truncated: !encoding.get_overflowing().is_empty(),
            ids: encoding.get_ids().to_vec(),
        })
    }
}
