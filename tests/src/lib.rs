//! Vitals end-to-end test harness: real `vitals-agent` and `vitals-worker` processes with the
//! real model, driven into faults and probed the way the kubelet probes them.
//!
//! - [`pod`]: start the agent and the worker as a pod would; signals, logs, `/status`;
//! - [`probe`]: one kubelet probe and the kubelet's threshold state machine;
//! - [`timeline`]: what happened when, printed when a scenario fails;
//! - [`load`]: a constant embedding load whose every request has exactly one outcome;
//! - [`client`]: the small HTTP/1.1 client under all of the above;
//! - [`fake_vllm`]: a fake vLLM (its own process) for the upstream scenarios;
//! - [`report`]: measured detection latencies;
//! - [`freezer`]: the cgroup v1 freezer (uninterruptible sleep on demand);
//! - [`slots`]: how many scenarios share the machine;
//! - [`bins`]: where the binaries and the model are.
//!
//! The scenarios themselves are in `tests/e2e/`; `docs/e2e.md` describes them.

pub mod bins;
pub mod client;
pub mod fake_vllm;
pub mod freezer;
pub mod load;
pub mod pod;
pub mod probe;
pub mod report;
pub mod slots;
pub mod timeline;
