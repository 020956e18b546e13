//! Self-attention: the fused query/key/value projection, the attention proper, and the
//! output projection with its residual add and layer norm. The attention proper is the
//! backend's kernel: on the CPU straight on the packed tokens, one task per (sequence,
//! head), no padding and no mask ([`PackedAttention`]); on a device in padded length
//! groups with candle's batched kernels ([`PaddedAttention`]).

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::linear::{self, Linear};
use super::norm::Norm;
use super::{Backend, BertConfig, PackedBatch, Span};

/// How a backend computes the attention proper.
pub trait AttentionKernel {
    /// What it prepares once per batch for every layer.
    type Plan;

    /// Prepares `batch` on `device`.
    fn plan(batch: &PackedBatch, device: &Device) -> Result<Self::Plan>;

    /// `softmax(q·kᵀ)·v` of each sequence's tokens from packed `qkv` rows ([tokens,
    /// 3·hidden], the query pre-scaled): the context vectors, [tokens, hidden].
    fn context(
        qkv: &Tensor,
        batch: &PackedBatch,
        plan: &Self::Plan,
        heads: usize,
    ) -> Result<Tensor>;
}

/// One layer's self-attention sublayer.
pub struct Attention<B: Backend> {
    /// Query (pre-scaled by 1/√head width), key and value stacked: [3·hidden, hidden].
    qkv: B::Linear,
    output: B::Linear,
    norm: B::Norm,
    heads: usize,
}

impl<B: Backend> Attention<B> {
    /// Reads the sublayer under `vb` (a model's `encoder.layer.N`), fusing the three
    /// projections into one and folding the 1/√head scale into the query's.
    pub fn load(vb: VarBuilder, config: &BertConfig) -> Result<Self> {
        let hidden = config.hidden_size;
        let attention = vb.pp("attention");
        let own = attention.pp("self");
        let (query_w, query_b) = linear::weights(own.pp("query"), hidden, hidden)?;
        let (key_w, key_b) = linear::weights(own.pp("key"), hidden, hidden)?;
        let (value_w, value_b) = linear::weights(own.pp("value"), hidden, hidden)?;
        let scale = 1.0 / (config.head_width() as f64).sqrt();
        let qkv = B::Linear::new(
            Tensor::cat(&[(query_w * scale)?, key_w, value_w], 0)?,
            Tensor::cat(&[(query_b * scale)?, key_b, value_b], 0)?,
        )?;
        let out = attention.pp("output");
        let (output_w, output_b) = linear::weights(out.pp("dense"), hidden, hidden)?;
        Ok(Self {
            qkv,
            output: B::Linear::new(output_w, output_b)?,
            norm: B::Norm::load(out.pp("LayerNorm"), hidden, config.layer_norm_eps)?,
            heads: config.num_attention_heads,
        })
    }

    /// `norm(attention(xs) + xs)` for the packed tokens `xs` of `batch`.
    pub fn forward(
        &self,
        xs: &Tensor,
        batch: &PackedBatch,
        plan: &<B::Attention as AttentionKernel>::Plan,
    ) -> Result<Tensor> {
        let qkv = self.qkv.forward(xs)?;
        let context = B::Attention::context(&qkv, batch, plan, self.heads)?;
        self.output.forward_residual_norm(&context, xs, &self.norm)
    }
}

/// Attention on the packed tokens, sequence by sequence, over candle's CPU thread pool.
#[derive(Debug)]
pub enum PackedAttention {}

impl AttentionKernel for PackedAttention {
    /// The packed batch is all it reads.
    type Plan = ();

    fn plan(_batch: &PackedBatch, _device: &Device) -> Result<()> {
        Ok(())
    }

    fn context(qkv: &Tensor, batch: &PackedBatch, _plan: &(), heads: usize) -> Result<Tensor> {
        qkv.apply_op1_no_bwd(&PackedOp {
            spans: batch.spans(),
            heads,
        })
    }
}

/// The CPU kernel of [`PackedAttention`].
struct PackedOp<'a> {
    spans: &'a [Span],
    heads: usize,
}

impl CustomOp1 for PackedOp<'_> {
    fn name(&self) -> &'static str {
        "packed-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("packed-attention: f32 only")
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("packed-attention: qkv must be contiguous")
        };
        let (tokens, width) = layout.shape().dims2()?;
        let hidden = width / 3;
        let packed = self.spans.last().map_or(0, |s| s.start + s.len);
        if packed != tokens || hidden % self.heads != 0 {
            candle_core::bail!(
                "packed-attention: qkv {:?} for {packed} tokens, {} heads",
                layout.dims(),
                self.heads
            )
        }
        let qkv = &data[start..end];
        let head = hidden / self.heads;
        let tasks: Vec<(Span, usize)> = self
            .spans
            .iter()
            .flat_map(|&span| (0..self.heads).map(move |h| (span, h * head)))
            .collect();
        let contexts: Vec<Vec<f32>> = tasks
            .par_iter()
            .map(|&(span, column)| attend(qkv, hidden, span, column, head))
            .collect();
        let mut out = vec![0f32; tokens * hidden];
        for (&(span, column), context) in tasks.iter().zip(&contexts) {
            for (t, row) in span.rows().zip(context.chunks_exact(head)) {
                let at = t * hidden + column;
                out[at..at + head].copy_from_slice(row);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((tokens, hidden))))
    }
}

/// One head of one sequence: `softmax(q·kᵀ)·v` for the tokens of `span`, the head's
/// columns from `column`; returns [len, head] row-major.
fn attend(qkv: &[f32], hidden: usize, span: Span, column: usize, head: usize) -> Vec<f32> {
    let row = |t: usize, part: usize| {
        let at = (span.start + t) * 3 * hidden + part * hidden + column;
        &qkv[at..at + head]
    };
    let mut scores = vec![0f32; span.len];
    let mut out = vec![0f32; span.len * head];
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

/// Per-group cost in padded-token equivalents, deciding when splitting a batch's
/// attention by length pays off: each group costs a gather, a few small matrix products
/// and their per-call work. 64 is the CPU's measured per-pass cost from before the packed
/// encoder (docs/benchmarks.md); no GPU figure has been measured.
const GROUP_OVERHEAD_TOKENS: usize = 64;

/// Attention in padded length groups with candle's batched kernels (any device).
#[derive(Debug)]
pub enum PaddedAttention {}

impl AttentionKernel for PaddedAttention {
    type Plan = PaddedPlan;

    fn plan(batch: &PackedBatch, device: &Device) -> Result<PaddedPlan> {
        PaddedPlan::new(batch, &length_groups(batch, GROUP_OVERHEAD_TOKENS), device)
    }

    fn context(
        qkv: &Tensor,
        _batch: &PackedBatch,
        plan: &PaddedPlan,
        heads: usize,
    ) -> Result<Tensor> {
        let mut contexts: Vec<Tensor> = Vec::with_capacity(plan.groups.len());
        for group in &plan.groups {
            contexts.push(group.context(qkv, heads)?);
        }
        match &plan.unpad {
            None => Ok(contexts
                .pop()
                .expect("a plan without unpad has exactly one group")),
            Some(unpad) => Tensor::cat(&contexts, 0)?.index_select(unpad, 0),
        }
    }
}

/// The gathers and masks of attention in padded groups, built once per batch.
pub struct PaddedPlan {
    groups: Vec<PaddedGroup>,
    /// For each packed token, its row in the groups' padded outputs laid end to end;
    /// `None` when that order is already the packed order (one group, no padding).
    unpad: Option<Tensor>,
}

/// Sequences attended together, padded to the longest of them.
struct PaddedGroup {
    rows: usize,
    width: usize,
    /// For each padded slot, the packed token it reads (padding reads token 0 and is
    /// masked); `None` when the group is the whole batch unpadded.
    pad: Option<Tensor>,
    /// Added to the attention scores: 0 for real keys, the lowest f32 for padding;
    /// [rows, 1, 1, width]. `None` when no sequence of the group is padded.
    mask: Option<Tensor>,
}

impl PaddedPlan {
    /// Lays out `groups` (indices into `batch`'s sequences, each index once) on `device`.
    pub fn new(batch: &PackedBatch, groups: &[Vec<usize>], device: &Device) -> Result<Self> {
        let spans = batch.spans();
        let in_order = groups.len() == 1 && groups[0].iter().enumerate().all(|(k, &i)| k == i);
        let mut unpad = vec![0u32; batch.tokens()];
        let mut padded_rows = 0usize;
        let mut planned = Vec::with_capacity(groups.len());
        for group in groups {
            let width = group.iter().map(|&i| spans[i].len).max().unwrap_or(0);
            let uniform = group.iter().all(|&i| spans[i].len == width);
            let mut pad = vec![0u32; group.len() * width];
            let mut mask = vec![f32::MIN; group.len() * width];
            for (r, &i) in group.iter().enumerate() {
                for (t, token) in spans[i].rows().enumerate() {
                    let slot = r * width + t;
                    pad[slot] = token as u32;
                    mask[slot] = 0.0;
                    unpad[token] = (padded_rows + slot) as u32;
                }
            }
            padded_rows += group.len() * width;
            planned.push(PaddedGroup {
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
        let unpad = if in_order && planned.iter().all(|g| g.mask.is_none()) {
            None
        } else {
            Some(Tensor::from_vec(unpad, batch.tokens(), device)?)
        };
        Ok(Self {
            groups: planned,
            unpad,
        })
    }
}

impl PaddedGroup {
    /// The group's context vectors, [rows·width, hidden], padded slots included.
    fn context(&self, qkv: &Tensor, heads: usize) -> Result<Tensor> {
        let hidden = qkv.dim(1)? / 3;
        let head = hidden / heads;
        let padded = match &self.pad {
            None => qkv.clone(),
            Some(pad) => qkv.index_select(pad, 0)?,
        };
        let padded = padded.reshape((self.rows, self.width, 3, heads, head))?;
        // [rows, heads, width, head] each.
        let part = |k: usize| padded.get_on_dim(2, k)?.transpose(1, 2)?.contiguous();
        let (query, key, value) = (part(0)?, part(1)?, part(2)?);
        let mut scores = query.matmul(&key.t()?)?;
        if let Some(mask) = &self.mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        probs
            .matmul(&value)?
            .transpose(1, 2)?
            .reshape((self.rows * self.width, hidden))
    }
}

/// Splits `batch` into attention groups, each padded to its longest, minimising the padded
/// tokens plus `overhead` per group. Groups are contiguous runs of the length-sorted order,
/// so this is an exact dynamic programme, O(n²) for the few dozen rows of a batch. Returns
/// indices into the batch's sequences; every index appears once.
pub fn length_groups(batch: &PackedBatch, overhead: usize) -> Vec<Vec<usize>> {
    let lens: Vec<usize> = batch.spans().iter().map(|s| s.len).collect();
    let mut order: Vec<usize> = (0..lens.len()).collect();
    // Stable: equal lengths keep arrival order.
    order.sort_by_key(|&i| lens[i]);
    let n = order.len();
    // best[j]: the cheapest cost of the first j sorted rows; cut[j]: where its last group starts.
    let mut best = vec![0usize; n + 1];
    let mut cut = vec![0usize; n + 1];
    for j in 1..=n {
        let width = lens[order[j - 1]].max(1);
        let (cost, start) = (0..j)
            .map(|i| (best[i] + (j - i) * width + overhead, i))
            .min()
            .expect("0..j is non-empty for j >= 1");
        best[j] = cost;
        cut[j] = start;
    }
    let mut groups = Vec::new();
    let mut j = n;
    while j > 0 {
        groups.push(order[cut[j]..j].to_vec());
        j = cut[j];
    }
    groups.reverse();
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch of sequences of these lengths (their ids do not matter here).
    fn batch_of(lens: &[usize]) -> PackedBatch {
        let seqs: Vec<Vec<u32>> = lens.iter().map(|&n| vec![0; n]).collect();
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        PackedBatch::new(&refs)
    }

    #[test]
    fn similar_lengths_stay_in_one_group() {
        let groups = length_groups(&batch_of(&[10, 12, 11, 9]), GROUP_OVERHEAD_TOKENS);
        assert_eq!(groups, vec![vec![3, 0, 2, 1]]);
    }

    #[test]
    fn a_long_outlier_gets_its_own_group() {
        let mut lens = vec![8; 16];
        lens.push(256);
        let groups = length_groups(&batch_of(&lens), GROUP_OVERHEAD_TOKENS);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[1], vec![16]);
        let mut all: Vec<usize> = groups.concat();
        all.sort_unstable();
        assert_eq!(all, (0..17).collect::<Vec<_>>());
    }

    #[test]
    fn empty_batch_has_no_groups() {
        assert!(length_groups(&batch_of(&[]), GROUP_OVERHEAD_TOKENS).is_empty());
    }
}
