//! The encoder's shape from `config.json`, and what this encoder can run of it.

use serde::Deserialize;

use crate::model::{read_json, ModelError, ModelSpec};

/// What `config.json` says about the encoder's shape (Hugging Face's BERT config; other
/// fields are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Width of every token vector.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer; divides `hidden_size`.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// The feed-forward activation; only `gelu` (exact, erf) is implemented.
    pub hidden_act: String,
    /// Positions the position embeddings cover.
    pub max_position_embeddings: usize,
    /// Rows of the token-type embeddings.
    pub type_vocab_size: usize,
    /// Epsilon of every layer norm.
    pub layer_norm_eps: f64,
}

impl BertConfig {
    /// Reads `config.json` from the spec's folder and checks that this encoder can run it
    /// with the spec's pooling width and truncation.
    pub fn read(spec: &ModelSpec) -> Result<Self, ModelError> {
        let config: Self = read_json(&spec.dir.join("config.json"))?;
        config.check(spec)?;
        Ok(config)
    }

    fn check(&self, spec: &ModelSpec) -> Result<(), ModelError> {
        if self.hidden_act != "gelu" {
            return Err(ModelError::Unsupported(format!(
                "hidden_act {:?} (only exact gelu)",
                self.hidden_act
            )));
        }
        if self.hidden_size != spec.dimension {
            return Err(ModelError::Unsupported(format!(
                "hidden_size {} differs from the pooling dimension {}",
                self.hidden_size, spec.dimension
            )));
        }
        if self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
            return Err(ModelError::Unsupported(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if spec.max_seq_length > self.max_position_embeddings {
            return Err(ModelError::Unsupported(format!(
                "max_seq_length {} exceeds max_position_embeddings {}",
                spec.max_seq_length, self.max_position_embeddings
            )));
        }
        Ok(())
    }

    /// Columns of one attention head.
    pub fn head_width(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}
