//! Which device the model runs on: parsing `--device`, opening it (or saying clearly why
//! there is no CUDA device), and describing it for the `device` check and `/info`.
//!
//! A `cuda` build links the NVIDIA driver library (candle-core 0.11.1 builds cudarc with
//! `dynamic-linking`), so it starts only where `libcuda.so.1` exists: a GPU node, or the
//! link-time stub of scripts/cuda-toolkit.sh. There, a missing GPU is an error value from
//! the driver, which [`open`] turns into [`DeviceError::Unavailable`].

use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::str::FromStr;

use candle_core::Device;

/// The `--device` choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// CUDA device 0 when built with CUDA and one is present, else CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA device with this ordinal.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("invalid device {s:?}: expected auto, cpu, cuda or cuda:N")),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// Why the requested device cannot be used. The worker fails start-up with this message
/// (phase `failed`, exit code 1).
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// CUDA was asked for but this binary was built without the `cuda` feature.
    #[error(
        "no CUDA device: this vitals-worker was built without CUDA support \
         (cargo feature `cuda`); use --device cpu or a CUDA build"
    )]
    NotCompiled,
    /// The CUDA device could not be opened: no GPU, no usable driver, or a bad ordinal.
    #[error("no CUDA device cuda:{ordinal}: {reason}")]
    Unavailable {
        /// The requested ordinal.
        ordinal: usize,
        /// What the CUDA driver said.
        reason: String,
    },
}

/// An opened device and how to describe it.
#[derive(Debug, Clone)]
pub struct OpenDevice {
    /// The candle device.
    pub device: Device,
    /// Short name: `cpu` or `cuda:N`.
    pub name: String,
    cpu_threads: usize,
}

impl OpenDevice {
    /// Human-readable detail for the `device` check: CPU threads, or the GPU's name and
    /// its memory now (call it after the warm-up to show what the model uses).
    pub fn describe(&self) -> String {
        if self.device.is_cuda() {
            describe_cuda(&self.device)
        } else {
            format!("cpu, {} threads", self.cpu_threads)
        }
    }
}

/// Sizes candle's CPU thread pools. Call it before any other thread exists: candle and
/// rayon read these variables once, when their pools start.
///
/// `RAYON_NUM_THREADS` sizes candle's matrix-product pool and its barrier pool (element-wise
/// ops). After each element-wise op the barrier pool's worker spins 25 000 rounds by
/// default; on a pod with 2 CPUs that spinning competes with the matrix products, about a
/// fifth of all CPU time in a profile. 100 rounds keeps the hand-off quick without it
/// (docs/benchmarks.md). A limit the operator set is kept.
///
/// With `--features mkl` the matrix products run on MKL's OpenMP team instead, sized by
/// `OMP_NUM_THREADS`; its threads spin `KMP_BLOCKTIME` after each product (200 ms by
/// default), competing with the element-wise ops between products, so that is cut to
/// [`MKL_BLOCKTIME_MS`] unless the operator set it.
pub fn configure_cpu_threads(threads: usize) {
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "100");
    }
    if cfg!(feature = "mkl") {
        std::env::set_var("OMP_NUM_THREADS", threads.to_string());
        if std::env::var_os("KMP_BLOCKTIME").is_none() {
            std::env::set_var("KMP_BLOCKTIME", MKL_BLOCKTIME_MS.to_string());
        }
    }
}

/// How long (ms) MKL's OpenMP threads spin after a matrix product before sleeping, with
/// `--features mkl` (docs/benchmarks.md: measured).
pub const MKL_BLOCKTIME_MS: u32 = 1;

/// Opens the device `spec` asks for. `auto` falls back to the CPU when no CUDA device can
/// be opened; an explicit `cuda:N` that cannot be opened is an error.
pub fn open(spec: DeviceSpec, cpu_threads: usize) -> Result<OpenDevice, DeviceError> {
    let cpu = || OpenDevice {
        device: Device::Cpu,
        name: "cpu".to_owned(),
        cpu_threads,
    };
    match spec {
        DeviceSpec::Cpu => Ok(cpu()),
        DeviceSpec::Cuda(n) => open_cuda(n, cpu_threads),
        DeviceSpec::Auto if cfg!(feature = "cuda") => match open_cuda(0, cpu_threads) {
            Ok(d) => Ok(d),
            Err(e) => {
                tracing::info!(error = %e, "no usable CUDA device; using the CPU");
                Ok(cpu())
            }
        },
        DeviceSpec::Auto => Ok(cpu()),
    }
}

fn open_cuda(ordinal: usize, cpu_threads: usize) -> Result<OpenDevice, DeviceError> {
    if !cfg!(feature = "cuda") {
        return Err(DeviceError::NotCompiled);
    }
    // Opening runs third-party code (candle, cudarc) against whatever driver the node
    // has. A panic there would end the model thread without a verdict and leave the
    // worker `loading` forever; as an error, start-up fails with a reason.
    let opened = panic::catch_unwind(AssertUnwindSafe(|| Device::new_cuda(ordinal)));
    let reason = match opened {
        Ok(Ok(device)) => {
            return Ok(OpenDevice {
                device,
                name: format!("cuda:{ordinal}"),
                cpu_threads,
            })
        }
        // candle attaches a backtrace when RUST_BACKTRACE is set: noise in a reason.
        Ok(Err(candle_core::Error::WithBacktrace { inner, .. })) => inner.to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(panic) => panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .map_or_else(
                || "the CUDA library panicked".to_owned(),
                |m| format!("the CUDA library panicked: {m}"),
            ),
    };
    Err(DeviceError::Unavailable { ordinal, reason })
}

#[cfg(feature = "cuda")]
fn describe_cuda(device: &Device) -> String {
    let Device::Cuda(cuda) = device else {
        return "cuda".to_owned();
    };
    let stream = cuda.cuda_stream();
    let ctx = stream.context();
    let name = ctx.name().unwrap_or_else(|e| format!("unknown GPU ({e})"));
    match ctx.mem_get_info() {
        Ok((free, total)) => format!(
            "{name}, {} MiB free of {} MiB",
            free / (1 << 20),
            total / (1 << 20)
        ),
        Err(e) => format!("{name}, memory unknown ({e})"),
    }
}

#[cfg(not(feature = "cuda"))]
fn describe_cuda(_device: &Device) -> String {
    // Unreachable in practice: Device::new_cuda fails without the feature.
    "cuda".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_specs() {
        assert_eq!("auto".parse(), Ok(DeviceSpec::Auto));
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        assert!("gpu".parse::<DeviceSpec>().is_err());
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn auto_and_cpu_open_the_cpu_without_cuda() {
        if cfg!(feature = "cuda") {
            return;
        }
        assert_eq!(open(DeviceSpec::Auto, 2).expect("cpu").name, "cpu");
        let d = open(DeviceSpec::Cpu, 3).expect("cpu");
        assert_eq!(d.describe(), "cpu, 3 threads");
        let err = open(DeviceSpec::Cuda(0), 1).expect_err("no CUDA in this build");
        assert!(matches!(err, DeviceError::NotCompiled), "{err:?}");
        assert!(err.to_string().starts_with("no CUDA device: "), "{err}");
    }
}
