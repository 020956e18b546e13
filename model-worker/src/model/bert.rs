//! The candle BERT sentence embedder: loads a sentence-transformers folder (weights read
//! in chunks so loading can report byte progress), runs the encoder with the attention
//! mask, pools (mean or CLS) over real tokens only, and splits a batch into length groups
//! so short texts are not padded to a long neighbour.
//!
//! The numerics follow sentence-transformers exactly (shared/MODEL.md): the mask is
//! passed to the encoder AND used again in pooling, the mean's count is clamped at 1e-9,
//! and `config.json`'s `gelu` is candle's exact erf GELU.

use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig, HiddenAct};

use super::{read_json, Embedder, ModelError, ModelSpec, Pooling};

/// Bytes read per step while loading weights; each step reports progress.
pub const READ_CHUNK: usize = 1 << 20;

/// Per-forward-pass cost in token equivalents, used to decide when splitting a batch by
/// length pays off: small matrix products and per-call work make one pass of a few rows
/// cost roughly as much as this many extra tokens of a big pass (measured on CPU; see
/// docs/benchmarks.md).
const PASS_OVERHEAD_TOKENS: usize = 64;

/// A BERT encoder with sentence-transformers pooling.
pub struct BertEmbedder {
    model: BertModel,
    device: Device,
    pooling: Pooling,
    dimension: usize,
    max_seq_length: usize,
}

impl std::fmt::Debug for BertEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BertEmbedder")
            .field("device", &self.device)
            .field("pooling", &self.pooling)
            .field("dimension", &self.dimension)
            .finish_non_exhaustive()
    }
}

/// Reads `path` fully in chunks, calling `progress(done, total)` after each; the callback
/// may abort the read by returning an error.
pub fn read_with_progress(
    path: &Path,
    progress: &mut dyn FnMut(u64, u64) -> Result<(), ModelError>,
) -> Result<Vec<u8>, ModelError> {
    let read_err = |source| ModelError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let total = file.metadata().map_err(read_err)?.len();
    let mut buf = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    progress(0, total)?;
    loop {
        let start = buf.len();
        let n = (&mut file)
            .take(READ_CHUNK as u64)
            .read_to_end(&mut buf)
            .map_err(read_err)?;
        if n == 0 {
            return Ok(buf);
        }
        debug_assert_eq!(buf.len(), start + n);
        progress(buf.len() as u64, total)?;
    }
}

impl BertEmbedder {
    /// Loads `config.json` and `model.safetensors` from the spec's folder onto `device`,
    /// reporting weight bytes read through `progress`.
    pub fn load(
        spec: &ModelSpec,
        device: &Device,
        progress: &mut dyn FnMut(u64, u64) -> Result<(), ModelError>,
    ) -> Result<Self, ModelError> {
        let config: BertConfig = read_json(&spec.dir.join("config.json"))?;
        if config.hidden_act != HiddenAct::Gelu {
            return Err(ModelError::Unsupported(format!(
                "hidden_act {:?} (only exact gelu)",
                config.hidden_act
            )));
        }
        if config.hidden_size != spec.dimension {
            return Err(ModelError::Unsupported(format!(
                "hidden_size {} differs from the pooling dimension {}",
                config.hidden_size, spec.dimension
            )));
        }
        if spec.max_seq_length > config.max_position_embeddings {
            return Err(ModelError::Unsupported(format!(
                "max_seq_length {} exceeds max_position_embeddings {}",
                spec.max_seq_length, config.max_position_embeddings
            )));
        }
        let weights = read_with_progress(&spec.dir.join("model.safetensors"), progress)?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, device)
            .map_err(ModelError::candle("parsing model.safetensors"))?;
        let model =
            BertModel::load(vb, &config).map_err(ModelError::candle("building the model"))?;
        Ok(Self {
            model,
            device: device.clone(),
            pooling: spec.pooling,
            dimension: spec.dimension,
            max_seq_length: spec.max_seq_length,
        })
    }

    /// One encoder pass over sequences padded to the longest; returns pooled vectors.
    fn forward(&self, batch: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let rows = batch.len();
        let width = batch.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0u32; rows * width];
        let mut mask = vec![0u32; rows * width];
        for (r, seq) in batch.iter().enumerate() {
            ids[r * width..r * width + seq.len()].copy_from_slice(seq);
            mask[r * width..r * width + seq.len()].fill(1);
        }
        let ids = Tensor::from_vec(ids, (rows, width), &self.device)?;
        let mask = Tensor::from_vec(mask, (rows, width), &self.device)?;
        let token_types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &token_types, Some(&mask))?;
        let pooled = match self.pooling {
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => {
                let mask = mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
                let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
                let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?;
                summed.broadcast_div(&counts)?
            }
        };
        pooled.to_device(&Device::Cpu)?.to_vec2()
    }

    /// Runs each length group as one padded pass; vectors come back in `batch` order.
    fn embed_groups(&self, batch: &[&[u32]], lens: &[usize]) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut out = vec![Vec::new(); batch.len()];
        for group in length_groups(lens, PASS_OVERHEAD_TOKENS) {
            let seqs: Vec<&[u32]> = group.iter().map(|&i| batch[i]).collect();
            let vectors = self
                .forward(&seqs)
                .map_err(ModelError::candle("forward pass"))?;
            for (i, v) in group.into_iter().zip(vectors) {
                out[i] = v;
            }
        }
        Ok(out)
    }
}

impl Embedder for BertEmbedder {
    fn dimension(&self) -> usize {
        self.dimension
    }

    fn embed(&mut self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        let lens: Vec<usize> = batch.iter().map(|s| s.len()).collect();
        if let Some(&len) = lens.iter().find(|&&l| l > self.max_seq_length) {
            return Err(ModelError::Unsupported(format!(
                "sequence of {len} tokens exceeds the maximum {}",
                self.max_seq_length
            )));
        }
        // Inside candle's rayon pool the calling thread is one of the matrix-product
        // workers; outside it, it would sit idle while the pool's threads work, one more
        // thread than cores on a small pod (measured: docs/benchmarks.md).
        candle_core::utils::with_threadpool(|| self.embed_groups(batch, &lens))
    }
}

/// Splits a batch (given by its sequence lengths) into groups, each run as one padded
/// pass, minimising the padded tokens plus `overhead` per pass. Groups are contiguous
/// runs of the length-sorted order, so this is an exact dynamic programme, O(n²) for the
/// few dozen rows of a batch. Returns indices into `lens`; every index appears once.
pub fn length_groups(lens: &[usize], overhead: usize) -> Vec<Vec<usize>> {
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

    #[test]
    fn similar_lengths_stay_in_one_pass() {
        let groups = length_groups(&[10, 12, 11, 9], 64);
        assert_eq!(groups, vec![vec![3, 0, 2, 1]]);
    }

    #[test]
    fn a_long_outlier_gets_its_own_pass() {
        let mut lens = vec![8; 16];
        lens.push(256);
        let groups = length_groups(&lens, 64);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[1], vec![16]);
        let mut all: Vec<usize> = groups.concat();
        all.sort_unstable();
        assert_eq!(all, (0..17).collect::<Vec<_>>());
    }

    #[test]
    fn empty_batch_has_no_groups() {
        assert!(length_groups(&[], 64).is_empty());
    }

    #[test]
    fn reads_in_chunks_with_monotonic_progress() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.bin");
        let data: Vec<u8> = (0..(READ_CHUNK * 2 + 10)).map(|i| i as u8).collect();
        std::fs::write(&path, &data).expect("write");
        let mut seen = Vec::new();
        let read = read_with_progress(&path, &mut |done, total| {
            seen.push((done, total));
            Ok(())
        })
        .expect("read");
        assert_eq!(read, data);
        let total = data.len() as u64;
        assert_eq!(seen.first(), Some(&(0, total)));
        assert_eq!(seen.last(), Some(&(total, total)));
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
    }

    #[test]
    fn progress_callback_can_abort() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("w.bin");
        std::fs::write(&path, vec![0u8; 10]).expect("write");
        let err = read_with_progress(&path, &mut |_, _| Err(ModelError::Interrupted))
            .expect_err("aborted");
        assert!(matches!(err, ModelError::Interrupted));
    }
}
