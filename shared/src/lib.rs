//! `vitals-proto`: the contract between Vitals workers and the agent, in code.
//!
//! - [`message`]: the protocol v1 messages and the rules that decode them;
//! - [`codec`]: newline framing with the 64 KiB line limit (pure, blocking and tokio);
//! - [`name`]: worker-name rules;
//! - [`env`](mod@env): the names of the environment variables the agent, `inject` and workers share;
//! - [`reporter`]: the std-thread client a worker embeds to report to the agent.
//!
//! `SPEC.md` §1 and §7 are the normative text; `README.md` beside this crate explains
//! the protocol for authors of reporters in other languages.

pub mod codec;
pub mod env;
pub mod message;
pub mod name;
pub mod reporter;

/// Where the agent listens for workers and where workers look for it, unless both are told
/// otherwise (SPEC §1): the socket in the emptyDir the pod shares.
pub const DEFAULT_SOCKET: &str = "/run/vitals/agent.sock";

pub use message::{ErrorCode, Phase};
pub use name::WorkerName;
pub use reporter::{LoopCounters, Reporter, ReporterConfig};
