//! A seeded fault soak over the real binaries (`make soak`; a 60 s run is part of
//! `make test`): one agent, two protocol workers and three fake vLLMs (one idle, with a canary) as separate
//! processes,
//! faults that overlap across targets and hit the agent itself, every path probed
//! kubelet-style at 10 Hz, and a judge that compares what the agent said with what was done.
//!
//! - [`faults`]: the fault kinds as a table (what each does, what it must show, by when);
//! - [`plan`]: the seeded plan of faults;
//! - [`run`]: the live run, returning [`records::Records`];
//! - [`judge`]: the pure judge of records, and the tables it prints;
//! - [`records`]: the records, kept (`SOAK_KEEP=dir`) and replayed (`SOAK_REPLAY=dir`).
//!
//! `docs/e2e.md` says how to run it and what a long run gave.

pub mod faults;
pub mod judge;
pub mod plan;
pub mod records;
pub mod run;

use std::path::PathBuf;

/// `SOAK_SEED`, `SOAK_S`, `SOAK_KEEP`, `SOAK_REPLAY`, as the soak binary and the e2e test
/// read them.
#[derive(Debug, Clone)]
pub struct Env {
    /// `SOAK_SEED` (default: the given one).
    pub seed: u64,
    /// `SOAK_S` (default: the given one).
    pub secs: f64,
    /// `SOAK_KEEP`: keep the run's records and logs in this folder.
    pub keep: Option<PathBuf>,
    /// `SOAK_REPLAY`: judge the records in this folder instead of running.
    pub replay: Option<PathBuf>,
}

/// Why the soak's environment is unusable.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// A variable that does not parse.
    #[error("{name}={value}: {why}")]
    Bad {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// Why.
        why: String,
    },
}

impl Env {
    /// Reads the variables, with these defaults.
    pub fn read(default_seed: u64, default_secs: f64) -> Result<Env, EnvError> {
        fn parse<T: std::str::FromStr>(name: &'static str, default: T) -> Result<T, EnvError>
        where
            T::Err: std::fmt::Display,
        {
            match std::env::var(name) {
                Ok(value) => value.trim().parse().map_err(|e: T::Err| EnvError::Bad {
                    name,
                    value,
                    why: e.to_string(),
                }),
                Err(_) => Ok(default),
            }
        }
        let secs: f64 = parse("SOAK_S", default_secs)?;
        if !(secs.is_finite() && secs >= 10.0) {
            return Err(EnvError::Bad {
                name: "SOAK_S",
                value: secs.to_string(),
                why: "at least 10 seconds".into(),
            });
        }
        let dir = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Ok(Env {
            seed: parse("SOAK_SEED", default_seed)?,
            secs,
            keep: dir("SOAK_KEEP"),
            replay: dir("SOAK_REPLAY"),
        })
    }
}

/// Runs (or, with `SOAK_REPLAY`, re-reads) and judges a soak as `env` says; keeps the run
/// when `SOAK_KEEP` is set; returns the printed report and whether it passed.
pub fn soak(env: &Env) -> Result<(String, bool), records::ReadError> {
    let records = match &env.replay {
        Some(dir) => records::Records::load(dir)?,
        None => {
            let run = run::run(&run::Options {
                seed: env.seed,
                secs: env.secs,
            });
            if let Some(dir) = &env.keep {
                run.keep(dir).map_err(|source| records::ReadError::Io {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
            run.records
        }
    };
    let verdict = judge::judge(&records);
    Ok((judge::render(&records, &verdict, 40), verdict.passed()))
}
