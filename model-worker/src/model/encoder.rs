//! The BERT encoder on packed tokens: a batch's sequences are laid end to end without
//! padding ([total tokens, hidden]) for every matrix product, layer norm, GELU and residual,
//! so a batch is one pass whatever its lengths. Attention, which mixes the tokens of one
//! sequence, runs on the packed tokens too on the CPU (a task per sequence and head); other
//! devices run it in padded length groups with candle's batched kernels.
//!
//! It reads the weight names of Hugging Face's `BertModel` (what a sentence-transformers
//! folder holds) and computes what it computes, with three rewrites made once at load: the
//! query, key and value projections are one matrix product, the attention scale is folded
//! into the query weights, and the token-type-0 embedding (the only type a sentence
//! embedder uses) is folded into the position embeddings.

use candle_core::{
    CpuStorage, CustomOp1, Device, InplaceOp1, InplaceOp2, Layout, Module, Shape, Tensor,
};
use candle_nn::VarBuilder;
use rayon::prelude::*;
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

/// A layer norm's scale and shift, applied with candle's fused kernel (and, on the CPU,
/// by [`Dense::forward_residual_norm`] with the residual add folded in).
struct Norm {
    weight: Tensor,
    bias: Tensor,
    /// `weight` and `bias` on the host when they live on the CPU.
    host: Option<(Vec<f32>, Vec<f32>)>,
    eps: f32,
}

impl Norm {
    fn load(vb: VarBuilder, width: usize, eps: f64) -> candle_core::Result<Self> {
        let weight = vb.get(width, "weight")?;
        let bias = vb.get(width, "bias")?;
        let host = if weight.device().is_cpu() {
            Some((weight.to_vec1()?, bias.to_vec1()?))
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            host,
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
    /// The bias again, on the host, when the weights live on the CPU: there it is added in
    /// place on the product (with the GELU that may follow), one pass over the product
    /// instead of an allocation and a pass per operation.
    host_bias: Option<Vec<f32>>,
}

impl Dense {
    fn load(vb: VarBuilder, input: usize, output: usize) -> candle_core::Result<Self> {
        let weight = vb.get((output, input), "weight")?;
        let bias = vb.get(output, "bias")?;
        Self::new(weight, bias)
    }

    fn new(weight: Tensor, bias: Tensor) -> candle_core::Result<Self> {
        let host_bias = if bias.device().is_cpu() {
            Some(bias.to_vec1()?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            host_bias,
        })
    }

    /// `x · Wᵀ + b`.
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let product = xs.matmul(&self.weight.t()?)?;
        match &self.host_bias {
            Some(bias) => {
                product.inplace_op1(&BiasGelu { bias, gelu: false })?;
                Ok(product)
            }
            None => product.broadcast_add(&self.bias),
        }
    }

    /// `norm(x · Wᵀ + b + residual)`: a BERT sublayer's output.
    fn forward_residual_norm(
        &self,
        xs: &Tensor,
        residual: &Tensor,
        norm: &Norm,
    ) -> candle_core::Result<Tensor> {
        let product = xs.matmul(&self.weight.t()?)?;
        match (&self.host_bias, &norm.host) {
            (Some(bias), Some((weight, shift))) => {
                product.inplace_op2(
                    residual,
                    &ResidualNorm {
                        bias,
                        weight,
                        shift,
                        eps: norm.eps,
                    },
                )?;
                Ok(product)
            }
            _ => norm.forward(&(product.broadcast_add(&self.bias)? + residual)?),
        }
    }

    /// `gelu(x · Wᵀ + b)`, the exact (erf) GELU.
    fn forward_gelu(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let product = xs.matmul(&self.weight.t()?)?;
        match &self.host_bias {
            Some(bias) => {
                product.inplace_op1(&BiasGelu { bias, gelu: true })?;
                Ok(product)
            }
            None => product.broadcast_add(&self.bias)?.gelu_erf(),
        }
    }
}

/// Adds a bias to every row of a fresh, contiguous CPU matrix in place, then optionally
/// applies the exact GELU with [`erf`]; rows are split over candle's thread pool.
struct BiasGelu<'a> {
    bias: &'a [f32],
    gelu: bool,
}

impl InplaceOp1 for BiasGelu<'_> {
    fn name(&self) -> &'static str {
        "bias-gelu"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("bias-gelu: f32 only")
        };
        let width = self.bias.len();
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("bias-gelu: the product must be contiguous")
        };
        if layout.dims().last() != Some(&width) {
            candle_core::bail!("bias-gelu: rows of {:?}, bias of {width}", layout.dims())
        }
        // Enough rows per task that the split costs less than it saves.
        let rows_per_task = (16_384 / width).max(1);
        data[start..end]
            .par_chunks_mut(rows_per_task * width)
            .for_each(|chunk| {
                for row in chunk.chunks_exact_mut(width) {
                    for (x, b) in row.iter_mut().zip(self.bias) {
                        *x += b;
                    }
                    if self.gelu {
                        for x in row.iter_mut() {
                            *x *= 0.5 * (1.0 + erf(*x * std::f32::consts::FRAC_1_SQRT_2));
                        }
                    }
                }
            });
        Ok(())
    }
}

/// `x = norm(x + bias + residual)` row by row, in place on a fresh, contiguous CPU
/// product; rows are split over candle's thread pool. The variance is taken around the
/// mean (two passes), as PyTorch's layer norm does.
struct ResidualNorm<'a> {
    bias: &'a [f32],
    weight: &'a [f32],
    shift: &'a [f32],
    eps: f32,
}

impl InplaceOp2 for ResidualNorm<'_> {
    fn name(&self) -> &'static str {
        "residual-norm"
    }

    fn cpu_fwd(
        &self,
        storage: &mut CpuStorage,
        layout: &Layout,
        residual: &CpuStorage,
        residual_layout: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(data), CpuStorage::F32(residual)) = (storage, residual) else {
            candle_core::bail!("residual-norm: f32 only")
        };
        let width = self.bias.len();
        let (Some((start, end)), Some((r_start, r_end))) = (
            layout.contiguous_offsets(),
            residual_layout.contiguous_offsets(),
        ) else {
            candle_core::bail!("residual-norm: operands must be contiguous")
        };
        if layout.dims().last() != Some(&width) || end - start != r_end - r_start {
            candle_core::bail!(
                "residual-norm: product {:?}, residual {:?}, width {width}",
                layout.dims(),
                residual_layout.dims()
            )
        }
        let rows_per_task = (16_384 / width).max(1);
        data[start..end]
            .par_chunks_mut(rows_per_task * width)
            .zip(residual[r_start..r_end].par_chunks(rows_per_task * width))
            .for_each(|(chunk, residual)| {
                for (row, residual) in chunk
                    .chunks_exact_mut(width)
                    .zip(residual.chunks_exact(width))
                {
                    for ((x, b), r) in row.iter_mut().zip(self.bias).zip(residual) {
                        *x += b + r;
                    }
                    let mean = lane_sum(row, |x| x) / width as f32;
                    let var = lane_sum(row, |x| (x - mean) * (x - mean)) / width as f32;
                    let inv_std = (var + self.eps).sqrt().recip();
                    for ((x, w), s) in row.iter_mut().zip(self.weight).zip(self.shift) {
                        *x = (*x - mean) * inv_std * w + s;
                    }
                }
            });
        Ok(())
    }
}

/// The sum of `f` over `row` in eight interleaved partial sums, so it vectorises.
fn lane_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += f(x);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
    lanes.iter().sum::<f32>() + tail
}

/// The error function in f32 to within a few ulp, branch-free so it vectorises: Eigen's
/// rational approximation (odd degree-13 over even degree-8 polynomial in x, input clamped
/// to [-4, 4] where erf is ±1 in f32).
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329_3e-3;
    q = x2 * q + -1.426_474e-2;
    x * p / q
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
        let qkv = Dense::new(
            Tensor::cat(&[(query.weight * scale)?, key.weight, value.weight], 0)?,
            Tensor::cat(&[(query.bias * scale)?, key.bias, value.bias], 0)?,
        )?;
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
    attention: AttentionLayout,
}

enum AttentionLayout {
    /// Attention straight on the packed tokens, sequence by sequence (CPU only).
    Packed {
        /// Tokens per sequence, in packed order.
        lens: Vec<usize>,
    },
    /// Attention in padded length groups, with candle's batched kernels (any device).
    Grouped {
        groups: Vec<AttentionGroup>,
        /// For each packed token, its row in the groups' padded outputs laid end to end;
        /// `None` when that order is already the packed order (one group, no padding).
        unpad: Option<Tensor>,
    },
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
    /// Lays out `batch` (token ids per sequence, none empty). With `groups` (indices into
    /// `batch`, each index once) attention runs padded per group; without, it runs on the
    /// packed tokens, which only the CPU can do.
    pub fn new(
        batch: &[&[u32]],
        groups: Option<&[Vec<usize>]>,
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
        let attention = match groups {
            None if device.is_cpu() => AttentionLayout::Packed {
                lens: batch.iter().map(|s| s.len()).collect(),
            },
            None => candle_core::bail!("packed attention runs on the CPU only"),
            Some(groups) => grouped(batch, &starts, groups, device)?,
        };
        Ok(Self {
            ids: Tensor::from_vec(ids, tokens, device)?,
            positions: Tensor::from_vec(positions, tokens, device)?,
            attention,
        })
    }
}

/// The gathers and masks of attention in padded `groups`.
fn grouped(
    batch: &[&[u32]],
    starts: &[usize],
    groups: &[Vec<usize>],
    device: &Device,
) -> candle_core::Result<AttentionLayout> {
    let tokens: usize = batch.iter().map(|s| s.len()).sum();
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
    Ok(AttentionLayout::Grouped {
        groups: attention,
        unpad,
    })
}

/// Self-attention straight on packed `qkv` rows ([tokens, 3·hidden], query pre-scaled):
/// one task per (sequence, head) over candle's thread pool, no padding, no mask. Returns
/// the context vectors, [tokens, hidden].
struct PackedAttention<'a> {
    lens: &'a [usize],
    heads: usize,
}

impl CustomOp1 for PackedAttention<'_> {
    fn name(&self) -> &'static str {
        "packed-attention"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("packed-attention: f32 only")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("packed-attention: qkv must be contiguous")
        };
        let (tokens, width) = layout.shape().dims2()?;
        let hidden = width / 3;
        if self.lens.iter().sum::<usize>() != tokens || hidden % self.heads != 0 {
            candle_core::bail!(
                "packed-attention: qkv {:?} for {} tokens, {} heads",
                layout.dims(),
                self.lens.iter().sum::<usize>(),
                self.heads
            )
        }
        let qkv = &data[start..end];
        let head = hidden / self.heads;
        let starts: Vec<usize> = self
            .lens
            .iter()
            .scan(0, |next, &len| {
                let start = *next;
                *next += len;
                Some(start)
            })
            .collect();
        let tasks: Vec<(usize, usize)> = (0..self.lens.len())
            .flat_map(|s| (0..self.heads).map(move |h| (s, h)))
            .collect();
        let contexts: Vec<Vec<f32>> = tasks
            .par_iter()
            .map(|&(s, h)| attend(qkv, hidden, starts[s], self.lens[s], h * head, head))
            .collect();
        let mut out = vec![0f32; tokens * hidden];
        for (&(s, h), context) in tasks.iter().zip(&contexts) {
            for (t, row) in context.chunks_exact(head).enumerate() {
                let at = (starts[s] + t) * hidden + h * head;
                out[at..at + head].copy_from_slice(row);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((tokens, hidden))))
    }
}

/// One head of one sequence: `softmax(q·kᵀ)·v` for the `len` tokens from `start`, the head's
/// columns from `column`; returns [len, head] row-major.
fn attend(
    qkv: &[f32],
    hidden: usize,
    start: usize,
    len: usize,
    column: usize,
    head: usize,
) -> Vec<f32> {
    let row = |t: usize, part: usize| {
        let at = (start + t) * 3 * hidden + part * hidden + column;
        &qkv[at..at + head]
    };
    let mut scores = vec![0f32; len];
    let mut out = vec![0f32; len * head];
    for (i, context) in out.chunks_exact_mut(head).enumerate() {
        let query = row(i, 0);
        let mut max = f32::NEG_INFINITY;
        for (j, score) in scores.iter_mut().enumerate() {
            *score = dot(query, row(j, 1));
            max = max.max(*score);
        }
        let mut total = 0f32;
        for score in scores.iter_mut() {
            *score = (*score - max).exp();
            total += *score;
        }
        let inv_total = total.recip();
        for (j, &score) in scores.iter().enumerate() {
            let p = score * inv_total;
            for (c, v) in context.iter_mut().zip(row(j, 2)) {
                *c += p * v;
            }
        }
    }
    out
}

/// `a · b` in eight interleaved partial sums, so it vectorises.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (mut ca, mut cb) = (a.chunks_exact(8), b.chunks_exact(8));
    for (x, y) in (&mut ca).zip(&mut cb) {
        for k in 0..8 {
            lanes[k] += x[k] * y[k];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    lanes.iter().sum::<f32>() + tail
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
        let context = match &packing.attention {
            AttentionLayout::Packed { lens } => qkv.apply_op1_no_bwd(&PackedAttention {
                lens,
                heads: self.heads,
            })?,
            AttentionLayout::Grouped { groups, unpad } => {
                let mut contexts = Vec::with_capacity(groups.len());
                for group in groups {
                    contexts.push(self.attention(&qkv, group)?);
                }
                match unpad {
                    None => contexts
                        .pop()
                        .expect("an unpadded pass has exactly one group"),
                    Some(unpad) => Tensor::cat(&contexts, 0)?.index_select(unpad, 0)?,
                }
            }
        };
        let attended =
            layer
                .attention_out
                .forward_residual_norm(&context, xs, &layer.attention_norm)?;
        let inner = layer.intermediate.forward_gelu(&attended)?;
        layer
            .output
            .forward_residual_norm(&inner, &attended, &layer.output_norm)
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const CONFIG: BertConfig = BertConfig {
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

    /// A two-layer BERT with random weights under Hugging Face's names.
    fn random_encoder() -> Encoder {
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
        let tensors: HashMap<String, Tensor> = shapes
            .into_iter()
            .map(|(name, shape)| {
                let t = Tensor::randn(0f32, 0.5, shape, &Device::Cpu).expect("randn");
                (name, t)
            })
            .collect();
        let vb = VarBuilder::from_tensors(tensors, candle_core::DType::F32, &Device::Cpu);
        Encoder::load(vb, &CONFIG).expect("the names and shapes are BertModel's")
    }

    fn run(encoder: &Encoder, batch: &[&[u32]], groups: Option<&[Vec<usize>]>) -> Vec<f32> {
        let packing = Packing::new(batch, groups, &Device::Cpu).expect("packs");
        let out = encoder.forward(&packing).expect("runs");
        out.flatten_all().expect("flat").to_vec1().expect("f32")
    }

    /// The packed attention (CPU) and the padded groups (other devices) give the same
    /// token vectors, for a batch split in groups with padding and for one sequence alone.
    #[test]
    fn packed_and_grouped_attention_agree() {
        let encoder = random_encoder();
        let seqs: Vec<Vec<u32>> = [3usize, 9, 4, 17, 9]
            .iter()
            .map(|&len| (0..len as u32).map(|t| (t * 7 + len as u32) % 50).collect())
            .collect();
        let batch: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let groups = [vec![0, 2], vec![1, 4, 3]];
        let alone = [vec![0]];
        for (batch, groups) in [(&batch[..], &groups[..]), (&batch[3..4], &alone[..])] {
            let packed = run(&encoder, batch, None);
            let grouped = run(&encoder, batch, Some(groups));
            assert_eq!(packed.len(), grouped.len());
            let worst = packed
                .iter()
                .zip(&grouped)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-4, "max abs difference {worst}");
        }
    }

    #[test]
    fn erf_matches_libm_to_a_few_ulp() {
        let mut worst = 0f32;
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4;
            let exact = libm::erf(f64::from(x));
            worst = worst.max((f64::from(erf(x)) - exact).abs() as f32);
        }
        assert!(worst < 1e-6, "max abs error {worst}");
    }
}
