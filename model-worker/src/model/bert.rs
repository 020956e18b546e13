//! The candle BERT sentence embedder: loads a sentence-transformers folder (weights read
//! in chunks so loading can report byte progress), runs a batch as one pass of the packed
//! encoder ([`super::encoder`]: no padding; on the CPU attention runs on the packed tokens,
//! elsewhere in length groups so short texts do not attend over a long neighbour's
//! padding), and pools (mean or CLS) over real tokens only.
//!
//! The numerics follow sentence-transformers (shared/MODEL.md): padding never reaches a
//! real token (masked in attention, absent elsewhere), the mean's count is clamped at 1e-9,
//! and `config.json`'s `gelu` is the exact erf GELU: on the CPU with the encoder's own
//! vectorised `erf` (within 1e-6 of libm's, tested), elsewhere candle's `gelu_erf`.

use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::encoder::{pool, BertConfig, Encoder, Packing};
use super::{read_json, Embedder, ModelError, ModelSpec, Pooling};

/// Bytes read per step while loading weights; each step reports progress.
pub const READ_CHUNK: usize = 1 << 20;

/// Per-attention-group cost in padded-token equivalents, used off the CPU to decide when
/// splitting a batch's attention by length pays off: each group costs a gather, a few small
/// matrix products and their per-call work. 64 is the CPU's measured per-pass cost from
/// before the packed encoder (docs/benchmarks.md); no GPU figure has been measured.
const ATTENTION_GROUP_OVERHEAD_TOKENS: usize = 64;

/// A BERT encoder with sentence-transformers pooling.
pub struct BertEmbedder {
    encoder: Encoder,
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
        if config.hidden_act != "gelu" {
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
        if config.num_attention_heads == 0 || config.hidden_size % config.num_attention_heads != 0 {
            return Err(ModelError::Unsupported(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                config.hidden_size, config.num_attention_heads
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
        let encoder =
            Encoder::load(vb, &config).map_err(ModelError::candle("building the model"))?;
        Ok(Self {
            encoder,
            device: device.clone(),
            pooling: spec.pooling,
            dimension: spec.dimension,
            max_seq_length: spec.max_seq_length,
        })
    }

    /// One encoder pass over the whole batch; returns pooled vectors in `batch` order.
    fn forward(&self, batch: &[&[u32]], lens: &[usize]) -> candle_core::Result<Vec<Vec<f32>>> {
        // The CPU attends on the packed tokens; other devices in padded length groups.
        let groups =
            (!self.device.is_cpu()).then(|| length_groups(lens, ATTENTION_GROUP_OVERHEAD_TOKENS));
        let packing = Packing::new(batch, groups.as_deref(), &self.device)?;
        let hidden = self.encoder.forward(&packing)?;
        let pooled = pool(&hidden, lens, self.pooling == Pooling::Mean, &self.device)?;
        pooled.to_device(&Device::Cpu)?.to_vec2()
    }
}

impl Embedder for BertEmbedder {
    fn dimension(&self) -> usize {
        self.dimension
    }

    fn embed(&mut self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        let lens: Vec<usize> = batch.iter().map(|s| s.len()).collect();
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // The tokenizer always adds [CLS] and [SEP]; a sequence without them has no token
        // to pool.
        if lens.contains(&0) {
            return Err(ModelError::Unsupported(
                "an empty token sequence (no special tokens)".into(),
            ));
        }
        if let Some(&len) = lens.iter().find(|&&l| l > self.max_seq_length) {
            return Err(ModelError::Unsupported(format!(
                "sequence of {len} tokens exceeds the maximum {}",
                self.max_seq_length
            )));
        }
        // Inside candle's rayon pool the calling thread is one of the matrix-product
        // workers; outside it, it would sit idle while the pool's threads work, one more
        // thread than cores on a small pod (measured: docs/benchmarks.md).
        candle_core::utils::with_threadpool(|| self.forward(batch, &lens))
            .map_err(ModelError::candle("forward pass"))
    }
}

/// Splits a batch (given by its sequence lengths) into attention groups, each padded to
/// its longest (off the CPU only), minimising the padded tokens plus `overhead` per group. Groups are contiguous
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
