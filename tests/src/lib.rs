//! Vitals end-to-end test harness: real `vitals-agent` and `vitals-worker` processes with the
//! real model, driven into faults and probed the way the kubelet probes them; and the one test
//! toolkit every crate's tests use (a dev-dependency of `vitals-agent` and `vitals-worker`).
//!
//! - [`pod`]: start the agent and the worker as a pod would; signals, logs, `/status`;
//! - [`probe`]: one kubelet probe and the kubelet's threshold state machine;
//! - [`timeline`]: what happened when, printed when a scenario fails;
//! - [`load`]: a constant embedding load whose every request has exactly one outcome;
//! - [`client`]: the one HTTP/1.1 test client, under all of the above and every crate's tests;
//! - [`prom`]: the one Prometheus text reader (a sample by name and labels);
//! - [`peer`]: fake protocol peers (a scripted worker, a recording agent, a python worker);
//! - [`wait`]: polling with a deadline instead of sleeping;
//! - [`member`]: a fake group member answering `/group` as told (SPEC §9);
//! - [`fake_vllm`]: a fake vLLM (its own process) for the upstream scenarios;
//! - [`fake_triton`]: a fake Triton whose Python-backend stub dies unreaped;
//! - `fake-loader` (a binary): a model load that moves only memory, CPU, reads, or nothing;
//! - [`mesh`]: pods as Istio's and Linkerd's injectors leave them, for inject and the webhook;
//! - [`report`]: measured detection latencies;
//! - [`freezer`]: the cgroup v1 freezer (uninterruptible sleep on demand);
//! - [`cgroup`]: a cgroup v2 folder per "container" (a pod's shape for /proc discovery);
//! - [`slots`]: how many scenarios share the machine;
//! - [`bins`]: where the binaries and the model are (a missing one fails the test);
//! - [`lws`]: LeaderWorkerSet's leader and worker pods as its controllers build them;
//! - [`apiserver`]: the API server's defaulting of a stored pod;
//! - [`soak`]: the seeded fault soak and its judge.
//!
//! The scenarios themselves are in `tests/e2e/`; `docs/e2e.md` describes them.

pub mod apiserver;
pub mod bins;
pub mod cgroup;
pub mod client;
pub mod fake_triton;
pub mod fake_vllm;
pub mod freezer;
pub mod load;
pub mod lws;
pub mod member;
pub mod mesh;
pub mod peer;
pub mod pod;
pub mod probe;
pub mod prom;
pub mod report;
pub mod slots;
pub mod soak;
pub mod timeline;
pub mod wait;
