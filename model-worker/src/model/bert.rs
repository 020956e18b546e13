//! The candle BERT sentence embedder: loads a sentence-transformers folder (weights read
//! in chunks so loading can report byte progress), chooses the encoder's backend once from
//! the device ([`super::encoder`]: the CPU's packed kernels, or candle's on a device), runs
//! a batch as one pass of the packed encoder, and pools (mean or CLS) over real tokens only.
//!
//! The numerics follow sentence-transformers (shared/MODEL.md): padding never reaches a
//! real token (there is none on the CPU; masked in a device's attention groups), the mean's
//! count is clamped at 1e-9, and `config.json`'s `gelu` is the exact erf GELU: on the CPU
//! with the encoder's own vectorised `erf` (within 1e-6 of libm's, tested), elsewhere
//! candle's `gelu_erf`.

use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::encoder::{pool, Backend, BertConfig, CpuBackend, DeviceBackend, Encoder, PackedBatch};
use super::{BatchCost, Embedder, ModelError, ModelSpec, Pooling};

/// Bytes read per step while loading weights; each step reports progress.
pub const READ_CHUNK: usize = 1 << 20;

/// A BERT encoder with sentence-transformers pooling.
pub struct BertEmbedder {
    encoder: LoadedEncoder,
    pooling: Pooling,
    dimension: usize,
    max_seq_length: usize,
}

/// The encoder on the backend its device chose at load.
enum LoadedEncoder {
    Cpu(Encoder<CpuBackend>),
    Device(Encoder<DeviceBackend>),
}

impl std::fmt::Debug for BertEmbedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match self.encoder {
            LoadedEncoder::Cpu(_) => "cpu",
            LoadedEncoder::Device(_) => "device",
        };
        f.debug_struct("BertEmbedder")
            .field("backend", &backend)
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
        let config = BertConfig::read(spec)?;
        let weights = read_with_progress(&spec.dir.join("model.safetensors"), progress)?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, device)
            .map_err(ModelError::candle("parsing model.safetensors"))?;
        let encoder = if device.is_cpu() {
            Encoder::load(vb, &config).map(LoadedEncoder::Cpu)
        } else {
            Encoder::load(vb, &config).map(LoadedEncoder::Device)
        }
        .map_err(ModelError::candle("building the model"))?;
        Ok(Self {
            encoder,
            pooling: spec.pooling,
            dimension: spec.dimension,
            max_seq_length: spec.max_seq_length,
        })
    }
}

/// One encoder pass over the whole batch on backend `B`; returns pooled vectors in batch
/// order.
fn forward<B: Backend>(
    encoder: &Encoder<B>,
    batch: &PackedBatch,
    pooling: Pooling,
) -> candle_core::Result<Vec<Vec<f32>>> {
    let hidden = encoder.forward(batch)?;
    pool(&hidden, batch, pooling)?
        .to_device(&Device::Cpu)?
        .to_vec2()
}

impl Embedder for BertEmbedder {
    fn dimension(&self) -> usize {
        self.dimension
    }

    fn batch_cost(&self) -> BatchCost {
        match self.encoder {
            LoadedEncoder::Cpu(_) => CpuBackend::COST,
            LoadedEncoder::Device(_) => DeviceBackend::COST,
        }
    }

    fn embed(&mut self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        // The tokenizer always adds [CLS] and [SEP]; a sequence without them has no token
        // to pool.
        if batch.iter().any(|s| s.is_empty()) {
            return Err(ModelError::Unsupported(
                "an empty token sequence (no special tokens)".into(),
            ));
        }
        if let Some(seq) = batch.iter().find(|s| s.len() > self.max_seq_length) {
            return Err(ModelError::Unsupported(format!(
                "sequence of {} tokens exceeds the maximum {}",
                seq.len(),
                self.max_seq_length
            )));
        }
        let packed = PackedBatch::new(batch);
        let pooling = self.pooling;
        // Inside candle's rayon pool the calling thread is one of the matrix-product
        // workers; outside it, it would sit idle while the pool's threads work, one more
        // thread than cores on a small pod (measured: docs/benchmarks.md).
        candle_core::utils::with_threadpool(|| match &self.encoder {
            LoadedEncoder::Cpu(encoder) => forward(encoder, &packed, pooling),
            LoadedEncoder::Device(encoder) => forward(encoder, &packed, pooling),
        })
        .map_err(ModelError::candle("forward pass"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
