//! `/status`, for operators: the [`doc`]ument's types, how the agent [`build`]s it from a
//! snapshot, and the [`cli`] (`vitals-agent status`) that fetches and renders it.

pub mod build;
pub mod cli;
pub mod doc;

pub use build::{AgentFacts, StatusSource};
pub use cli::{fetch, render, run, StatusArgs, StatusError};
pub use doc::StatusDoc;
