//! The feed-forward sublayer: `norm(W₂ · gelu(W₁ · x + b₁) + b₂ + x)`, the exact (erf)
//! GELU fused into the first projection and the residual add and norm into the second.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::linear::{self, Linear};
use super::norm::Norm;
use super::{Backend, BertConfig};

/// One layer's feed-forward sublayer.
pub struct FeedForward<B: Backend> {
    intermediate: B::Linear,
    output: B::Linear,
    norm: B::Norm,
}

impl<B: Backend> FeedForward<B> {
    /// Reads the sublayer under `vb` (a model's `encoder.layer.N`).
    pub fn load(vb: VarBuilder, config: &BertConfig) -> Result<Self> {
        let (hidden, inner) = (config.hidden_size, config.intermediate_size);
        let (w1, b1) = linear::weights(vb.pp("intermediate").pp("dense"), hidden, inner)?;
        let output = vb.pp("output");
        let (w2, b2) = linear::weights(output.pp("dense"), inner, hidden)?;
        Ok(Self {
            intermediate: B::Linear::new(w1, b1)?,
            output: B::Linear::new(w2, b2)?,
            norm: B::Norm::load(output.pp("LayerNorm"), hidden, config.layer_norm_eps)?,
        })
    }

    /// The sublayer's output for the attention's output `xs`: [tokens, hidden].
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let inner = self.intermediate.forward_gelu(xs)?;
        self.output.forward_residual_norm(&inner, xs, &self.norm)
    }
}
