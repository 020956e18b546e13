//! The first layer: each token's word embedding plus its position's embedding (with the
//! token-type-0 row folded in at load), layer-normed, in the packed batch's order.

use candle_core::{Device, Result, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::norm::{DeviceNorm, HostNorm, Norm};
use super::{rows_per_task, BertConfig, PackedBatch};

/// The embedding layer as a backend keeps it.
pub trait Embeddings: Sized {
    /// Reads the tables and the norm under `vb` (the model's `embeddings.`).
    fn load(vb: VarBuilder, config: &BertConfig) -> Result<Self>;

    /// The normed embeddings of `batch`'s tokens: [tokens, hidden].
    fn forward(&self, batch: &PackedBatch) -> Result<Tensor>;
}

/// The word table [vocab, hidden] and the position table [positions, hidden], the latter
/// with the token-type-0 row already added.
fn tables(vb: &VarBuilder, config: &BertConfig) -> Result<(Tensor, Tensor)> {
    let hidden = config.hidden_size;
    let words = vb
        .pp("word_embeddings")
        .get((config.vocab_size, hidden), "weight")?;
    let positions = vb
        .pp("position_embeddings")
        .get((config.max_position_embeddings, hidden), "weight")?;
    let token_type = vb
        .pp("token_type_embeddings")
        .get((config.type_vocab_size, hidden), "weight")?;
    Ok((words, positions.broadcast_add(&token_type.get(0)?)?))
}

/// The tables on the host: each token's row is summed and normed in one pass over its
/// output.
pub struct HostEmbeddings {
    /// [vocab, hidden], row-major.
    words: Vec<f32>,
    /// [positions, hidden], row-major.
    positions: Vec<f32>,
    hidden: usize,
    norm: HostNorm,
}

impl Embeddings for HostEmbeddings {
    fn load(vb: VarBuilder, config: &BertConfig) -> Result<Self> {
        let (words, positions) = tables(&vb, config)?;
        Ok(Self {
            words: words.flatten_all()?.to_vec1()?,
            positions: positions.flatten_all()?.to_vec1()?,
            hidden: config.hidden_size,
            norm: HostNorm::load(
                vb.pp("LayerNorm"),
                config.hidden_size,
                config.layer_norm_eps,
            )?,
        })
    }

    fn forward(&self, batch: &PackedBatch) -> Result<Tensor> {
        let hidden = self.hidden;
        let (vocab, positions) = (self.words.len() / hidden, self.positions.len() / hidden);
        if let Some(id) = batch.ids().iter().find(|&&id| id as usize >= vocab) {
            candle_core::bail!("token id {id} is outside the vocabulary of {vocab}")
        }
        if let Some(span) = batch.spans().iter().find(|s| s.len > positions) {
            candle_core::bail!(
                "a sequence of {} tokens exceeds {positions} positions",
                span.len
            )
        }
        let tokens: Vec<(usize, usize)> = batch
            .ids()
            .iter()
            .zip(batch.positions())
            .map(|(&id, &position)| (id as usize * hidden, position as usize * hidden))
            .collect();
        let mut out = vec![0f32; tokens.len() * hidden];
        let per_task = rows_per_task(hidden);
        out.par_chunks_mut(per_task * hidden)
            .zip(tokens.par_chunks(per_task))
            .for_each(|(rows, tokens)| {
                for (row, &(word, position)) in rows.chunks_exact_mut(hidden).zip(tokens) {
                    // In range: ids and positions were checked against the tables above.
                    let word = &self.words[word..word + hidden];
                    let position = &self.positions[position..position + hidden];
                    for ((x, w), p) in row.iter_mut().zip(word).zip(position) {
                        *x = w + p;
                    }
                    self.norm.apply(row);
                }
            });
        Tensor::from_vec(out, (tokens.len(), hidden), &Device::Cpu)
    }
}

/// The tables as candle tensors on the model's device, gathered and normed with candle's
/// kernels.
pub struct DeviceEmbeddings {
    words: Tensor,
    positions: Tensor,
    norm: DeviceNorm,
}

impl Embeddings for DeviceEmbeddings {
    fn load(vb: VarBuilder, config: &BertConfig) -> Result<Self> {
        let (words, positions) = tables(&vb, config)?;
        Ok(Self {
            words,
            positions,
            norm: DeviceNorm::load(
                vb.pp("LayerNorm"),
                config.hidden_size,
                config.layer_norm_eps,
            )?,
        })
    }

    fn forward(&self, batch: &PackedBatch) -> Result<Tensor> {
        let device = self.words.device();
        let ids = Tensor::new(batch.ids(), device)?;
        let positions = Tensor::new(batch.positions(), device)?;
        let summed =
            (self.words.index_select(&ids, 0)? + self.positions.index_select(&positions, 0)?)?;
        self.norm.forward(&summed)
    }
}
