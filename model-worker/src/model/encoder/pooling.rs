//! Sentence vectors from packed token vectors, as sentence-transformers pools: the mean
//! over each sequence's tokens (the sum divided by the count clamped at 1e-9), or each
//! sequence's first (`[CLS]`) token.

use candle_core::{Result, Tensor};

use super::PackedBatch;
use crate::model::Pooling;

/// One vector per sequence of `batch` from its token vectors `hidden` ([tokens, hidden],
/// packed order), on `hidden`'s device: [sequences, hidden].
pub fn pool(hidden: &Tensor, batch: &PackedBatch, pooling: Pooling) -> Result<Tensor> {
    let device = hidden.device();
    let spans = batch.spans();
    match pooling {
        Pooling::Mean => {
            // One product with a [sequences, tokens] averaging matrix.
            let tokens = batch.tokens();
            let mut weights = vec![0f32; spans.len() * tokens];
            for (row, span) in weights.chunks_exact_mut(tokens.max(1)).zip(spans) {
                row[span.rows()].fill(1.0 / (span.len as f32).max(1e-9));
            }
            Tensor::from_vec(weights, (spans.len(), tokens), device)?.matmul(hidden)
        }
        Pooling::Cls => {
            // A sequence is at most max_seq_length tokens and a batch a few thousand: the
            // rows fit a u32.
            let firsts: Vec<u32> = spans.iter().map(|s| s.start as u32).collect();
            hidden.index_select(&Tensor::new(firsts.as_slice(), device)?, 0)
        }
    }
}
