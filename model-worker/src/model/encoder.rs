//! The BERT encoder on packed tokens: a batch's sequences are laid end to end without
//! padding ([total tokens, hidden]) for every matrix product, layer norm, GELU and residual,
//! so a batch is one pass whatever its lengths; only attention, which mixes tokens of one
//! sequence, runs on padded length groups.
//!
//! It reads the weight names of Hugging Face's `BertModel` (what a sentence-transformers
//! folder holds) and computes what it computes, with three rewrites made once at load: the
//! query, key and value projections are one matrix product, the attention scale is folded
//! into the query weights, and the token-type-0 embedding (the only type a sentence
//! embedder uses) is folded into the position embeddings.

use candle_core::{Device, Module, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

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

/// A layer norm's scale and shift, applied with candle's fused kernel.
struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl Norm {
    fn load(vb: VarBuilder, width: usize, eps: f64) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get(width, "weight")?,
            bias: vb.get(width, "bias")?,
            // The kernels take f32; BERT's 1e-12 is representable.
            eps: eps as f32,
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(xs, &self.weight, &self.bias, self.eps)
    }
}

/// `x · Wᵀ + b` with `W` stored as `torch.nn.Linear` stores it, [out, in].
struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    fn load(vb: VarBuilder, input: usize, output: usize) -> candle_core::Result<Self> {
        let weight = vb.get((output, input), "weight")?;
        let bias = vb.get(output, "bias")?;
        Ok(Self { weight, bias })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        xs.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }
}

struct Layer {
    /// Query (pre-scaled by 1/√head width), key and value stacked: [3·hidden, hidden].
    qkv: Dense,
    attention_out: Dense,
    attention_norm: Norm,
    intermediate: Dense,
    output: Dense,
    output_norm: Norm,
}

impl Layer {
    fn load(vb: VarBuilder, config: &BertConfig) -> candle_core::Result<Self> {
        let hidden = config.hidden_size;
        let head = hidden / config.num_attention_heads;
        let attention = vb.pp("attention");
        let own = attention.pp("self");
        let query = Dense::load(own.pp("query"), hidden, hidden)?;
        let key = Dense::load(own.pp("key"), hidden, hidden)?;
        let value = Dense::load(own.pp("value"), hidden, hidden)?;
        let scale = 1.0 / (head as f64).sqrt();
        let qkv = Dense {
            weight: Tensor::cat(&[(query.weight * scale)?, key.weight, value.weight], 0)?,
            bias: Tensor::cat(&[(query.bias * scale)?, key.bias, value.bias], 0)?,
        };
        let out = attention.pp("output");
        Ok(Self {
            qkv,
            attention_out: Dense::load(out.pp("dense"), hidden, hidden)?,
            attention_norm: Norm::load(out.pp("LayerNorm"), hidden, config.layer_norm_eps)?,
            intermediate: Dense::load(
                vb.pp("intermediate").pp("dense"),
                hidden,
                config.intermediate_size,
            )?,
            output: Dense::load(
                vb.pp("output").pp("dense"),
                config.intermediate_size,
                hidden,
            )?,
            output_norm: Norm::load(
                vb.pp("output").pp("LayerNorm"),
                hidden,
                config.layer_norm_eps,
            )?,
        })
    }
}

/// How one pass's packed tokens are laid out for attention, built once per batch and used by
/// every layer.
pub struct Packing {
    /// Token ids end to end.
    ids: Tensor,
    /// Each token's position inside its sequence.
    positions: Tensor,
    groups: Vec<AttentionGroup>,
    /// For each packed token, its row in the groups' padded outputs laid end to end; `None`
    /// when that order is already the packed order (one group, no padding).
    unpad: Option<Tensor>,
    /// Packed tokens.
    tokens: usize,
}

/// Sequences attended together, padded to the longest of them.
struct AttentionGroup {
    rows: usize,
    width: usize,
    /// For each padded slot, the packed token it reads (padding reads token 0 and is
    /// masked); `None` when the group is the whole batch unpadded.
    pad: Option<Tensor>,
    /// Added to the attention scores: 0 for real keys, the lowest f32 for padding;
    /// [rows, 1, 1, width]. `None` when no sequence of the group is padded.
    mask: Option<Tensor>,
}

impl Packing {
    /// Lays out `batch` (token ids per sequence, none empty) with attention in `groups`
    /// (indices into `batch`, each index once).
    pub fn new(
        batch: &[&[u32]],
        groups: &[Vec<usize>],
        device: &Device,
    ) -> candle_core::Result<Self> {
        let mut starts = Vec::with_capacity(batch.len());
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        for seq in batch {
            starts.push(ids.len());
            ids.extend_from_slice(seq);
            positions.extend(0..seq.len() as u32);
        }
        let tokens = ids.len();
        let in_order = groups.len() == 1 && groups[0].iter().enumerate().all(|(k, &i)| k == i);
        let mut unpad = vec![0u32; tokens];
        let mut padded_rows = 0usize;
        let mut attention = Vec::with_capacity(groups.len());
        for group in groups {
            let width = group.iter().map(|&i| batch[i].len()).max().unwrap_or(0);
            let uniform = group.iter().all(|&i| batch[i].len() == width);
            let mut pad = vec![0u32; group.len() * width];
            let mut mask = vec![f32::MIN; group.len() * width];
            for (r, &i) in group.iter().enumerate() {
                for t in 0..batch[i].len() {
                    pad[r * width + t] = (starts[i] + t) as u32;
                    mask[r * width + t] = 0.0;
                    unpad[starts[i] + t] = (padded_rows + r * width + t) as u32;
                }
            }
            padded_rows += group.len() * width;
            attention.push(AttentionGroup {
                rows: group.len(),
                width,
                pad: if in_order && uniform {
                    None
                } else {
                    Some(Tensor::from_vec(pad, group.len() * width, device)?)
                },
                mask: if uniform {
                    None
                } else {
                    Some(Tensor::from_vec(mask, (group.len(), 1, 1, width), device)?)
                },
            });
        }
        let unpad = if in_order && attention.iter().all(|g| g.mask.is_none()) {
            None
        } else {
            Some(Tensor::from_vec(unpad, tokens, device)?)
        };
        Ok(Self {
            ids: Tensor::from_vec(ids, tokens, device)?,
            positions: Tensor::from_vec(positions, tokens, device)?,
            groups: attention,
            unpad,
            tokens,
        })
    }

    /// Packed tokens in the pass.
    pub fn tokens(&self) -> usize {
        self.tokens
    }
}

/// A BERT encoder (embeddings and layers, no pooler).
pub struct Encoder {
    word_embeddings: candle_nn::Embedding,
    /// Position embeddings with the token-type-0 embedding already added.
    position_embeddings: candle_nn::Embedding,
    embedding_norm: Norm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
}

impl Encoder {
    /// Builds the encoder from `BertModel` weights (optionally under a `bert.` prefix, as a
    /// pre-training checkpoint stores them).
    pub fn load(vb: VarBuilder, config: &BertConfig) -> candle_core::Result<Self> {
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let hidden = config.hidden_size;
        let embeddings = vb.pp("embeddings");
        let word = embeddings
            .pp("word_embeddings")
            .get((config.vocab_size, hidden), "weight")?;
        let position = embeddings
            .pp("position_embeddings")
            .get((config.max_position_embeddings, hidden), "weight")?;
        let token_type = embeddings
            .pp("token_type_embeddings")
            .get((config.type_vocab_size, hidden), "weight")?;
        let position = position.broadcast_add(&token_type.get(0)?)?;
        let encoder = vb.pp("encoder");
        let layers = (0..config.num_hidden_layers)
            .map(|n| Layer::load(encoder.pp(format!("layer.{n}")), config))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            word_embeddings: candle_nn::Embedding::new(word, hidden),
            position_embeddings: candle_nn::Embedding::new(position, hidden),
            embedding_norm: Norm::load(embeddings.pp("LayerNorm"), hidden, config.layer_norm_eps)?,
            layers,
            heads: config.num_attention_heads,
            hidden,
        })
    }

    /// The last layer's token vectors, packed as `packing` lays them out: [tokens, hidden].
    pub fn forward(&self, packing: &Packing) -> candle_core::Result<Tensor> {
        let words = self.word_embeddings.forward(&packing.ids)?;
        let positions = self.position_embeddings.forward(&packing.positions)?;
        let mut xs = self.embedding_norm.forward(&(words + positions)?)?;
        for layer in &self.layers {
            xs = self.layer(layer, &xs, packing)?;
        }
        Ok(xs)
    }

    fn layer(&self, layer: &Layer, xs: &Tensor, packing: &Packing) -> candle_core::Result<Tensor> {
        let qkv = layer.qkv.forward(xs)?;
        let mut contexts = Vec::with_capacity(packing.groups.len());
        for group in &packing.groups {
            contexts.push(self.attention(&qkv, group)?);
        }
        let context = match &packing.unpad {
            None => contexts
                .pop()
                .expect("an unpadded pass has exactly one group"),
            Some(unpad) => Tensor::cat(&contexts, 0)?.index_select(unpad, 0)?,
        };
        let attended = layer
            .attention_norm
            .forward(&(layer.attention_out.forward(&context)? + xs)?)?;
        let inner = layer.intermediate.forward(&attended)?.gelu_erf()?;
        layer
            .output_norm
            .forward(&(layer.output.forward(&inner)? + attended)?)
    }

    /// Self-attention of one group: [rows·width, hidden] context vectors, padded slots
    /// included.
    fn attention(&self, qkv: &Tensor, group: &AttentionGroup) -> candle_core::Result<Tensor> {
        let head = self.hidden / self.heads;
        let padded = match &group.pad {
            None => qkv.clone(),
            Some(pad) => qkv.index_select(pad, 0)?,
        };
        let padded = padded.reshape((group.rows, group.width, 3, self.heads, head))?;
        // [rows, heads, width, head] each.
        let part = |k: usize| padded.get_on_dim(2, k)?.transpose(1, 2)?.contiguous();
        let (query, key, value) = (part(0)?, part(1)?, part(2)?);
        let mut scores = query.matmul(&key.t()?)?;
        if let Some(mask) = &group.mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        probs
            .matmul(&value)?
            .transpose(1, 2)?
            .reshape((group.rows * group.width, self.hidden))
    }
}

/// Sentence vectors from packed token vectors: the mean over each sequence's tokens (the
/// sum divided by the count clamped at 1e-9, as sentence-transformers does), or each
/// sequence's first token.
pub fn pool(
    hidden: &Tensor,
    lens: &[usize],
    mean: bool,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let tokens: usize = lens.iter().sum();
    if mean {
        // One product with a [sequences, tokens] averaging matrix.
        let mut weights = vec![0f32; lens.len() * tokens];
        let mut start = 0;
        for (r, &len) in lens.iter().enumerate() {
            let w = 1.0 / (len as f32).max(1e-9);
            weights[r * tokens + start..r * tokens + start + len].fill(w);
            start += len;
        }
        Tensor::from_vec(weights, (lens.len(), tokens), device)?.matmul(hidden)
    } else {
        let firsts: Vec<u32> = lens
            .iter()
            .scan(0usize, |start, &len| {
                let first = *start as u32;
                *start += len;
                Some(first)
            })
            .collect();
        hidden.index_select(&Tensor::new(firsts.as_slice(), device)?, 0)
    }
}
