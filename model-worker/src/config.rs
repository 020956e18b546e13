//! The command line (clap; every flag also from `VITALS_<FLAG>`) and its validation into
//! a [`Config`] the rest of the worker trusts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use vitals_proto::{env, WorkerName, DEFAULT_SOCKET};

use crate::model::device::DeviceSpec;

/// The duration grammar, as `--help` states it: the agent's, from the same crate (humantime).
pub const DURATIONS_HELP: &str =
    "Durations are numbers with units, summed: 250ms, 10s, 1m30s, 2h (a bare number is refused).";

/// Where `make model` puts the default model (all-MiniLM-L6-v2), relative to the repository
/// root (the Makefile's `MODEL_DIR`).
const DEFAULT_MODEL_DIR: &str = "models/all-MiniLM-L6-v2";

/// vitals-worker: a sentence-embedding server (OpenAI- and TEI-compatible) that reports
/// its lifecycle to the Vitals agent.
#[derive(Debug, Clone, Parser)]
#[command(name = "vitals-worker", version, after_help = DURATIONS_HELP)]
pub struct Args {
    /// Model folder in sentence-transformers layout (config.json, model.safetensors,
    /// tokenizer.json, modules.json, 1_Pooling/config.json).
    #[arg(long, env = env::MODEL_DIR, default_value = DEFAULT_MODEL_DIR)]
    pub model_dir: PathBuf,
    /// auto (CUDA when built with it and present, else CPU), cpu, cuda or cuda:N.
    #[arg(long, env = env::DEVICE, default_value = "auto")]
    pub device: DeviceSpec,
    /// HTTP address for the API.
    #[arg(long, env = env::LISTEN, default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// The agent's Unix socket; the worker runs (and keeps retrying quietly) without one.
    #[arg(long, env = env::AGENT_SOCKET, default_value = DEFAULT_SOCKET)]
    pub agent_socket: PathBuf,
    /// This worker's name in the agent (the container's name).
    #[arg(long, env = env::NAME, default_value = "model")]
    pub name: String,
    /// Most texts in one forward pass.
    #[arg(long, env = env::MAX_BATCH_SIZE, default_value_t = 32)]
    pub max_batch_size: usize,
    /// Most tokens in one forward pass, as the backend computes them: on the CPU (packed)
    /// the sum of the texts' lengths, on a GPU (padded attention) rows × longest text.
    #[arg(long, env = env::MAX_BATCH_TOKENS, default_value_t = 4096)]
    pub max_batch_tokens: usize,
    /// How long a partly filled batch waits for more work before running.
    #[arg(long, env = env::BATCH_LINGER, default_value = "2ms", value_parser = humantime::parse_duration)]
    pub batch_linger: Duration,
    /// Most requests queued for the model; beyond it requests get 429.
    #[arg(long, env = env::MAX_QUEUE, default_value_t = 1024)]
    pub max_queue: usize,
    /// Most texts in one request (413 beyond).
    #[arg(long, env = env::MAX_INPUTS, default_value_t = 2048)]
    pub max_inputs: usize,
    /// Most characters over all texts of one request (413 beyond).
    #[arg(long, env = env::MAX_REQUEST_CHARS, default_value_t = 1_000_000)]
    pub max_request_chars: usize,
    /// After SIGTERM, how long new requests are still accepted (readiness already failing)
    /// while endpoints and load balancers stop routing here. Keep
    /// terminationGracePeriodSeconds above drain delay + drain timeout + a margin.
    #[arg(long, env = env::DRAIN_DELAY, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_delay: Duration,
    /// After the drain delay, how long queued and running requests may take before exiting.
    #[arg(long, env = env::DRAIN_TIMEOUT, default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// How often the reporter sends a heartbeat to the agent.
    #[arg(long, env = env::HEARTBEAT_INTERVAL, default_value = "1s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// CPU threads for candle's matrix products (default: available cores).
    #[arg(long, env = env::THREADS)]
    pub threads: Option<usize>,
    /// Log format on stderr.
    #[arg(long, env = env::LOG_FORMAT, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Enables `POST /debug/fault` and the `--fault-*` start-up options. Tests only.
    #[arg(long, env = env::ENABLE_FAULT_INJECTION)]
    pub enable_fault_injection: bool,
    /// Fault: loading takes this long, with progress moving all along.
    #[arg(long, env = env::FAULT_SLOW_LOAD, value_parser = humantime::parse_duration, requires = "enable_fault_injection")]
    pub fault_slow_load: Option<Duration>,
    /// Fault: loading stops part-way (progress frozen) and never finishes.
    #[arg(
        long,
        env = env::FAULT_STUCK_LOAD,
        requires = "enable_fault_injection"
    )]
    pub fault_stuck_load: bool,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Limits on batches the model thread forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most sequences per batch.
    pub max_batch_size: usize,
    /// Most tokens per batch, as the model's [`crate::model::BatchCost`] counts them.
    pub max_batch_tokens: usize,
    /// How long a partly filled batch may wait for more work.
    pub linger: Duration,
}

/// Start-up faults (only with `--enable-fault-injection`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadFaults {
    /// Stretch loading to at least this long, progress moving.
    pub slow_load: Option<Duration>,
    /// Freeze progress part-way and never finish loading.
    pub stuck_load: bool,
}

/// A validated worker configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Model folder.
    pub model_dir: PathBuf,
    /// Device choice.
    pub device: DeviceSpec,
    /// HTTP address (the binary binds it; tests bind their own listener).
    pub listen: SocketAddr,
    /// The agent's socket.
    pub agent_socket: PathBuf,
    /// Worker name in the agent.
    pub name: WorkerName,
    /// Batch formation limits.
    pub batch: BatchLimits,
    /// Most queued requests.
    pub max_queue: usize,
    /// Most texts per request.
    pub max_inputs: usize,
    /// Most characters per request.
    pub max_request_chars: usize,
    /// How long new requests are still admitted after a shutdown signal.
    pub drain_delay: Duration,
    /// How long in-flight requests may take after the drain delay.
    pub drain_timeout: Duration,
    /// Heartbeat interval.
    pub heartbeat_interval: Duration,
    /// CPU threads candle uses (reported in the `device` check).
    pub threads: usize,
    /// Whether `/debug/fault` exists.
    pub fault_injection: bool,
    /// Start-up faults.
    pub load_faults: LoadFaults,
}

/// Why the command line is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The worker name breaks the protocol's naming rule.
    #[error("invalid --name: {0}")]
    Name(String),
    /// A limit is zero or inconsistent.
    #[error("invalid {flag}: {reason}")]
    Limit {
        /// The flag.
        flag: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl ConfigError {
    /// The flag at fault (its long name, without `--`).
    pub fn flag(&self) -> &'static str {
        match self {
            Self::Name(_) => "name",
            Self::Limit { flag, .. } => flag.trim_start_matches("--"),
        }
    }
}

impl Config {
    /// Validates parsed arguments.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let name = WorkerName::parse(&args.name).map_err(|e| ConfigError::Name(e.to_string()))?;
        for (flag, value) in [
            ("--max-batch-size", args.max_batch_size),
            ("--max-batch-tokens", args.max_batch_tokens),
            ("--max-queue", args.max_queue),
            ("--max-inputs", args.max_inputs),
            ("--max-request-chars", args.max_request_chars),
            ("--threads", args.threads.unwrap_or(1)),
        ] {
            if value == 0 {
                return Err(ConfigError::Limit {
                    flag,
                    reason: "must be at least 1".into(),
                });
            }
        }
        if args.heartbeat_interval.is_zero() {
            return Err(ConfigError::Limit {
                flag: "--heartbeat-interval",
                reason: "must be positive".into(),
            });
        }
        let threads = args.threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        Ok(Self {
            model_dir: args.model_dir,
            device: args.device,
            listen: args.listen,
            agent_socket: args.agent_socket,
            name,
            batch: BatchLimits {
                max_batch_size: args.max_batch_size,
                max_batch_tokens: args.max_batch_tokens,
                linger: args.batch_linger,
            },
            max_queue: args.max_queue,
            max_inputs: args.max_inputs,
            max_request_chars: args.max_request_chars,
            drain_delay: args.drain_delay,
            drain_timeout: args.drain_timeout,
            heartbeat_interval: args.heartbeat_interval,
            threads,
            fault_injection: args.enable_fault_injection,
            load_faults: LoadFaults {
                slow_load: args.fault_slow_load,
                stuck_load: args.fault_stuck_load,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("vitals-worker").chain(args.iter().copied()))
    }

    #[test]
    fn durations_take_the_agents_grammar() {
        let args = parse(&["--drain-timeout", "1m30s", "--batch-linger", "250ms"]).expect("parses");
        assert_eq!(args.drain_timeout, Duration::from_secs(90));
        assert_eq!(args.batch_linger, Duration::from_millis(250));
        for bad in ["3", "ten", "1x"] {
            let flag = format!("--drain-delay={bad}");
            assert!(parse(&[&flag]).is_err(), "{bad:?} must be refused");
        }
        let help = parse(&["--help"]).expect_err("help exits").to_string();
        assert!(help.contains(DURATIONS_HELP), "{help}");
    }

    #[test]
    fn defaults_match_the_spec() {
        let config = Config::from_args(parse(&[]).expect("defaults parse")).expect("valid");
        assert_eq!(config.name.to_string(), "model");
        assert_eq!(config.batch.max_batch_size, 32);
        assert_eq!(config.max_queue, 1024);
        assert_eq!(config.drain_delay, Duration::from_secs(5));
        assert_eq!(config.drain_timeout, Duration::from_secs(30));
        assert_eq!(config.device, DeviceSpec::Auto);
        assert!(!config.fault_injection);
    }

    #[test]
    fn fault_options_require_fault_injection() {
        assert!(parse(&["--fault-stuck-load"]).is_err());
        assert!(parse(&["--fault-slow-load", "5s"]).is_err());
        let args = parse(&[
            "--enable-fault-injection",
            "--fault-slow-load",
            "5s",
            "--fault-stuck-load",
        ])
        .expect("allowed together");
        let config = Config::from_args(args).expect("valid");
        assert_eq!(config.load_faults.slow_load, Some(Duration::from_secs(5)));
        assert!(config.load_faults.stuck_load);
    }

    #[test]
    fn rejects_bad_names_and_zero_limits() {
        let bad = parse(&["--name", "Bad_Name"]).expect("parses");
        assert!(matches!(Config::from_args(bad), Err(ConfigError::Name(_))));
        let zero = parse(&["--max-queue", "0"]).expect("parses");
        assert!(matches!(
            Config::from_args(zero),
            Err(ConfigError::Limit {
                flag: "--max-queue",
                ..
            })
        ));
        assert!(parse(&["--device", "tpu"]).is_err());
    }
}
