//! The BERT encoder on packed tokens: a batch's sequences are laid end to end without
//! padding ([total tokens, hidden], [`PackedBatch`]) for every matrix product, layer norm,
//! GELU and residual, so a batch is one pass whatever its lengths.
//!
//! Where it runs is a type, the [`Backend`], chosen once at load: [`CpuBackend`] keeps
//! its small weights on the host and runs its own fused kernels, attention included, on
//! the packed tokens; [`DeviceBackend`] runs candle's kernels on any device and attention
//! in padded length groups. Each layer (one file each) holds what its backend uses and
//! each op runs that backend's one path.
//!
//! It reads the weight names of Hugging Face's `BertModel` (what a sentence-transformers
//! folder holds) and computes what it computes, with three rewrites made once at load: the
//! query, key and value projections are one matrix product, the attention scale is folded
//! into the query weights, and the token-type-0 embedding (the only type a sentence
//! embedder uses) is folded into the position embeddings.

mod attention;
mod config;
mod embeddings;
mod feed_forward;
mod linear;
mod norm;
mod packed;
mod pooling;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

pub use self::config::BertConfig;
pub use self::packed::{PackedBatch, Span};
pub use self::pooling::pool;

use self::attention::{Attention, AttentionKernel, PackedAttention, PaddedAttention};
use self::embeddings::{DeviceEmbeddings, Embeddings, HostEmbeddings};
use self::feed_forward::FeedForward;
use self::linear::{DeviceLinear, HostLinear, Linear};
use self::norm::{DeviceNorm, HostNorm, Norm};
use super::BatchCost;

/// Where the encoder runs: the types its layers are made of. Chosen once at load
/// ([`super::bert::BertEmbedder`]); the encoder is generic over it, so no op asks at run
/// time which device it is on.
pub trait Backend {
    /// How a batch's size counts against `--max-batch-tokens` on this backend.
    const COST: BatchCost;
    /// Token and position embeddings with their norm.
    type Embeddings: Embeddings;
    /// A layer norm.
    type Norm: Norm;
    /// A linear projection, whose fused epilogues end in this backend's norm.
    type Linear: Linear<Norm = Self::Norm>;
    /// How self-attention mixes the tokens of each sequence.
    type Attention: AttentionKernel;
}

/// The CPU: packed tokens everywhere, attention included (a task per sequence and head);
/// bias, GELU, residual and layer norm run in place on each product with host-side
/// weights. A batch costs the sum of its texts' lengths.
#[derive(Debug)]
pub enum CpuBackend {}

impl Backend for CpuBackend {
    const COST: BatchCost = BatchCost::Packed;
    type Embeddings = HostEmbeddings;
    type Norm = HostNorm;
    type Linear = HostLinear;
    type Attention = PackedAttention;
}

/// Any candle device (a GPU; the CPU device in tests): candle's kernels on the packed
/// tokens, attention in padded length groups with batched kernels. A batch is budgeted as
/// rows × longest text, what its padded attention may take.
#[derive(Debug)]
pub enum DeviceBackend {}

impl Backend for DeviceBackend {
    const COST: BatchCost = BatchCost::Padded;
    type Embeddings = DeviceEmbeddings;
    type Norm = DeviceNorm;
    type Linear = DeviceLinear;
    type Attention = PaddedAttention;
}

/// Rows of a `width`-wide matrix per task when a host kernel splits rows over candle's
/// thread pool: enough that the split costs less than it saves.
fn rows_per_task(width: usize) -> usize {
    (16_384 / width.max(1)).max(1)
}

/// One encoder layer: self-attention, then the feed-forward block, each ending in a
/// residual add and a layer norm.
struct Layer<B: Backend> {
    attention: Attention<B>,
    feed_forward: FeedForward<B>,
}

/// A BERT encoder (embeddings and layers, no pooler) on backend `B`.
pub struct Encoder<B: Backend> {
    embeddings: B::Embeddings,
    layers: Vec<Layer<B>>,
}

impl<B: Backend> Encoder<B> {
    /// Builds the encoder from `BertModel` weights (optionally under a `bert.` prefix, as a
    /// pre-training checkpoint stores them), on the device of `vb`.
    pub fn load(vb: VarBuilder, config: &BertConfig) -> Result<Self> {
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let encoder = vb.pp("encoder");
        let layers = (0..config.num_hidden_layers)
            .map(|n| {
                let vb = encoder.pp(format!("layer.{n}"));
                Ok(Layer {
                    attention: Attention::load(vb.clone(), config)?,
                    feed_forward: FeedForward::load(vb, config)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings: B::Embeddings::load(vb.pp("embeddings"), config)?,
            layers,
        })
    }

    /// The last layer's token vectors in `batch`'s packed order: [tokens, hidden].
    pub fn forward(&self, batch: &PackedBatch) -> Result<Tensor> {
        let xs = self.embeddings.forward(batch)?;
        let plan = B::Attention::plan(batch, xs.device())?;
        self.layers(xs, batch, &plan)
    }

    /// The layers over embedded tokens `xs`, attention laid out by `plan`.
    fn layers(
        &self,
        mut xs: Tensor,
        batch: &PackedBatch,
        plan: &<B::Attention as AttentionKernel>::Plan,
    ) -> Result<Tensor> {
        for layer in &self.layers {
            let attended = layer.attention.forward(&xs, batch, plan)?;
            xs = layer.feed_forward.forward(&attended)?;
        }
        Ok(xs)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device};

    use super::attention::{length_groups, PaddedPlan};
    use super::*;

    pub(super) const CONFIG: BertConfig = BertConfig {
        vocab_size: 50,
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 32,
        hidden_act: String::new(),
        max_position_embeddings: 64,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
    };

    /// Random weights for a two-layer BERT under Hugging Face's names.
    fn random_weights() -> HashMap<String, Tensor> {
        let (h, i) = (CONFIG.hidden_size, CONFIG.intermediate_size);
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            ("embeddings.word_embeddings.weight".into(), vec![50, h]),
            ("embeddings.position_embeddings.weight".into(), vec![64, h]),
            ("embeddings.token_type_embeddings.weight".into(), vec![2, h]),
            ("embeddings.LayerNorm.weight".into(), vec![h]),
            ("embeddings.LayerNorm.bias".into(), vec![h]),
        ];
        for n in 0..CONFIG.num_hidden_layers {
            let p = format!("encoder.layer.{n}");
            for (name, out, inp) in [
                ("attention.self.query", h, h),
                ("attention.self.key", h, h),
                ("attention.self.value", h, h),
                ("attention.output.dense", h, h),
                ("intermediate.dense", i, h),
                ("output.dense", h, i),
            ] {
                shapes.push((format!("{p}.{name}.weight"), vec![out, inp]));
                shapes.push((format!("{p}.{name}.bias"), vec![out]));
            }
            for name in ["attention.output.LayerNorm", "output.LayerNorm"] {
                shapes.push((format!("{p}.{name}.weight"), vec![h]));
                shapes.push((format!("{p}.{name}.bias"), vec![h]));
            }
        }
        shapes
            .into_iter()
            .map(|(name, shape)| {
                let t = Tensor::randn(0f32, 0.5, shape, &Device::Cpu).expect("randn");
                (name, t)
            })
            .collect()
    }

    fn encoder<B: Backend>(weights: &HashMap<String, Tensor>) -> Encoder<B> {
        let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &Device::Cpu);
        Encoder::load(vb, &CONFIG).expect("the names and shapes are BertModel's")
    }

    fn flat(t: Tensor) -> Vec<f32> {
        t.flatten_all().expect("flat").to_vec1().expect("f32")
    }

    fn worst_difference(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    }

    /// The CPU backend (packed attention, host kernels) and the device backend (candle's
    /// kernels, padded attention groups), both on candle's CPU device, give the same token
    /// vectors: for a batch split in explicit groups with padding, for the groups the
    /// device plans itself, and for one sequence alone.
    #[test]
    fn cpu_and_device_backends_agree() {
        let weights = random_weights();
        let cpu = encoder::<CpuBackend>(&weights);
        let device = encoder::<DeviceBackend>(&weights);
        let seqs: Vec<Vec<u32>> = [3usize, 9, 4, 17, 9, 60]
            .iter()
            .map(|&len| (0..len as u32).map(|t| (t * 7 + len as u32) % 50).collect())
            .collect();
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let mixed = PackedBatch::new(&refs);
        let alone = PackedBatch::new(&refs[3..4]);

        let explicit = [vec![0, 2], vec![1, 4, 3], vec![5]];
        let planned = length_groups(&mixed, 8);
        assert!(planned.len() > 1, "the 60-token text gets its own group");
        for (batch, groups) in [
            (&mixed, &explicit[..]),
            (&mixed, &planned[..]),
            (&alone, &[vec![0]][..]),
        ] {
            let packed = flat(cpu.forward(batch).expect("cpu"));
            let xs = device.embeddings.forward(batch).expect("embeds");
            let plan = PaddedPlan::new(batch, groups, &Device::Cpu).expect("plans");
            let padded = flat(device.layers(xs, batch, &plan).expect("device"));
            let worst = worst_difference(&packed, &padded);
            assert!(
                worst < 1e-4,
                "groups {groups:?}: max abs difference {worst}"
            );
        }
        let own_plan = flat(device.forward(&mixed).expect("device"));
        let packed = flat(cpu.forward(&mixed).expect("cpu"));
        assert!(worst_difference(&packed, &own_plan) < 1e-4);
    }

    /// A token id beyond the vocabulary is an error from either backend, not a panic.
    #[test]
    fn an_unknown_token_id_is_an_error() {
        let weights = random_weights();
        let ids = [1u32, 50, 2];
        let batch = PackedBatch::new(&[&ids]);
        let err = encoder::<CpuBackend>(&weights)
            .forward(&batch)
            .expect_err("id 50 of a 50-token vocabulary");
        assert!(err.to_string().contains("token id 50"), "{err}");
        assert!(encoder::<DeviceBackend>(&weights).forward(&batch).is_err());
    }
}
