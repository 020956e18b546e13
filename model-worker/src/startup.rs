//! The model thread from start to end: read the folder, load the tokenizer, open the
//! device, read the weights (reporting byte progress), warm up at the largest batch
//! shape, report `ready`, then run the batching loop. Each step is reported to the agent
//! as it happens; an unrecoverable error reports `failed` and cancels the shutdown root,
//! so the process drains and exits 1.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use vitals_proto::message::Progress;
use vitals_proto::Phase;

use crate::batch::ModelLoop;
use crate::config::{BatchLimits, LoadFaults};
use crate::lifecycle::Lifecycle;
use crate::model::bert::{BertEmbedder, READ_CHUNK};
use crate::model::device::{self, DeviceSpec, OpenDevice};
use crate::model::tokenizer::TextTokenizer;
use crate::model::{Embedder, ModelError, ModelSpec};

/// What the HTTP side needs once the model is ready.
#[derive(Debug)]
pub struct Loaded {
    /// The tokenizer (truncating at [`ModelInfo::max_tokens`]).
    pub tokenizer: TextTokenizer,
    /// What `/info` and `/v1/models` show.
    pub info: ModelInfo,
}

/// The served model as `/info` describes it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelInfo {
    /// Model name (the folder's name).
    pub model: String,
    /// Embedding width.
    pub dimension: usize,
    /// Tokens per text after truncation.
    pub max_tokens: usize,
    /// `mean` or `cls`.
    pub pooling: &'static str,
    /// Whether embeddings are L2-normalised by default.
    pub normalize: bool,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Device detail (threads, GPU and memory).
    pub device_detail: String,
}

/// Everything the model thread needs.
#[derive(Debug)]
pub struct ModelThread {
    /// Model folder.
    pub spec_dir: std::path::PathBuf,
    /// Device choice.
    pub device: DeviceSpec,
    /// CPU threads (for the device description).
    pub threads: usize,
    /// Start-up faults.
    pub faults: LoadFaults,
    /// Lifecycle reporting.
    pub lifecycle: Lifecycle,
    /// Published once ready.
    pub loaded: Arc<OnceLock<Arc<Loaded>>>,
    /// The shutdown root: interrupts loading; cancelled here after a failure.
    pub shutdown: CancellationToken,
    /// The batching loop to run once ready.
    pub model_loop: ModelLoop,
}

impl ModelThread {
    /// Runs start-up then the loop on a new OS thread.
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("model".into())
            .spawn(move || self.run())
    }

    fn run(self) {
        let lifecycle = self.lifecycle.clone();
        let shutdown = self.shutdown.clone();
        let (mut model, device) = match self.start() {
            Ok(started) => started,
            Err(ModelError::Interrupted) => {
                tracing::info!("loading interrupted by shutdown");
                return;
            }
            Err(e) => {
                lifecycle.fail(&e.to_string());
                shutdown.cancel();
                return;
            }
        };
        let started = Instant::now();
        if let Err(e) = self.model_loop.run(&mut model, device.device.is_cuda()) {
            lifecycle.fail(&format!("inference on {} failed: {e}", device.name));
            shutdown.cancel();
        }
        tracing::debug!(uptime = ?started.elapsed(), "model loop ended");
    }

    fn start(&self) -> Result<(BertEmbedder, OpenDevice), ModelError> {
        let lifecycle = &self.lifecycle;
        lifecycle.set_phase(Phase::Loading, "reading model folder", None);
        let spec = ModelSpec::read(&self.spec_dir)?;
        let tokenizer = match TextTokenizer::load(&spec.dir, spec.max_seq_length) {
            Ok(t) => {
                lifecycle.set_check(
                    "tokenizer",
                    true,
                    &format!("tokenizer.json, truncation at {} tokens", t.max_len()),
                );
                t
            }
            Err(e) => {
                lifecycle.set_check("tokenizer", false, &e.to_string());
                return Err(e);
            }
        };
        let device = device::open(self.device, self.threads).inspect_err(|e| {
            lifecycle.set_check("device", false, &e.to_string());
        })?;
        let mut model = BertEmbedder::load(&spec, &device.device, &mut self.progress())?;
        let limits = &self.model_loop.limits;
        let (rows, len) = warmup_shape(limits, spec.max_seq_length);
        lifecycle.set_phase(
            Phase::Warming,
            &format!("warm-up pass at {rows} × {len} tokens"),
            None,
        );
        let started = Instant::now();
        let ids = vec![vec![101u32; len]; rows];
        let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        if let Err(e) = model.embed(&refs) {
            lifecycle.set_check("device", false, &format!("warm-up failed: {e}"));
            return Err(e);
        }
        tracing::info!(rows, len, elapsed = ?started.elapsed(), "warm-up done");
        let detail = device.describe();
        lifecycle.set_check("device", true, &detail);
        let info = ModelInfo {
            model: spec.name.clone(),
            dimension: model.dimension(),
            max_tokens: spec.max_seq_length,
            pooling: spec.pooling.as_str(),
            normalize: spec.normalize,
            device: device.name.clone(),
            device_detail: detail,
        };
        // `set` fails only if already set, and only this thread sets it.
        let _ = self.loaded.set(Arc::new(Loaded { tokenizer, info }));
        if lifecycle.set_phase(Phase::Ready, "serving", None) {
            tracing::info!(model = %spec.name, device = %device.name, "ready");
        }
        Ok((model, device))
    }

    /// The weight-reading progress callback: reports bytes, obeys the load faults and
    /// stops on shutdown.
    fn progress(&self) -> impl FnMut(u64, u64) -> Result<(), ModelError> + '_ {
        let mut per_chunk = None;
        move |done, total| {
            if self.shutdown.is_cancelled() {
                return Err(ModelError::Interrupted);
            }
            self.lifecycle.set_phase(
                Phase::Loading,
                "reading model.safetensors",
                Some(Progress {
                    done,
                    total: Some(total),
                    unit: "bytes".into(),
                }),
            );
            if let Some(slow) = self.faults.slow_load {
                // The callback runs once per chunk plus once at the start.
                let calls = total.div_ceil(READ_CHUNK as u64) + 1;
                let pause =
                    *per_chunk.get_or_insert_with(|| slow / u32::try_from(calls).unwrap_or(1));
                self.sleep(pause)?;
            }
            if self.faults.stuck_load && done >= total / 2 {
                tracing::warn!(done, total, "fault injection: loading is stuck");
                loop {
                    self.sleep(Duration::from_millis(100))?;
                }
            }
            Ok(())
        }
    }

    /// Sleeps, waking early with `Interrupted` on shutdown.
    fn sleep(&self, d: Duration) -> Result<(), ModelError> {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if self.shutdown.is_cancelled() {
                return Err(ModelError::Interrupted);
            }
            std::thread::sleep((end - Instant::now()).min(Duration::from_millis(50)));
        }
        Ok(())
    }
}

/// The largest batch the limits allow at the longest text: rows × tokens per row.
pub fn warmup_shape(limits: &BatchLimits, max_len: usize) -> (usize, usize) {
    let rows = (limits.max_batch_tokens / max_len.max(1)).clamp(1, limits.max_batch_size);
    (rows, max_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_uses_the_largest_allowed_shape() {
        let limits = BatchLimits {
            max_batch_size: 32,
            max_batch_tokens: 8192,
            linger: Duration::ZERO,
        };
        assert_eq!(warmup_shape(&limits, 256), (32, 256));
        let tight = BatchLimits {
            max_batch_tokens: 1000,
            ..limits
        };
        assert_eq!(warmup_shape(&tight, 256), (3, 256));
        let tiny = BatchLimits {
            max_batch_tokens: 10,
            ..limits
        };
        assert_eq!(warmup_shape(&tiny, 256), (1, 256));
    }
}
