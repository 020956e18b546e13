//! What a soak run records, as JSON lines (`records.jsonl`): the run (seed, flags, targets),
//! each fault with its ground-truth times, every probe, the agent's lives, its RSS, the
//! measured starvation, and panics found in the logs. The judge reads nothing else, so a
//! kept run (`SOAK_KEEP`) can be judged again (`SOAK_REPLAY`), or altered and judged.
//!
//! Times are seconds since the run's timeline started.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::faults::{Flags, Probe, TargetKind};

/// The file in a kept run's folder.
pub const FILE: &str = "records.jsonl";

/// The run as configured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// `SOAK_SEED`.
    pub seed: u64,
    /// `SOAK_S`: how long faults were planned (s).
    pub secs: f64,
    /// When every target was up and probing began.
    pub begin: f64,
    /// When probing stopped.
    pub end: f64,
    /// What the bounds derive from.
    pub flags: Flags,
    /// The targets beside the agent.
    pub targets: Vec<Target>,
    /// Fault kinds that could not be made on this machine, and why.
    pub not_made: Vec<String>,
    /// The agent binary that ran.
    pub agent_bin: String,
}

/// A target and its kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// Its name in the agent (`model`, `vllm-a`).
    pub name: String,
    /// What it is.
    pub kind: TargetKind,
    /// How many engines it runs (vLLM data parallel); 1 for the others (and in records
    /// kept before the field).
    #[serde(default = "one")]
    pub engines: u32,
    /// An upstream left idle with a canary (SPEC §12); false for the others (and in records
    /// kept before the field).
    #[serde(default)]
    pub canary: bool,
}

/// One fault as it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// Its number in the plan.
    pub id: usize,
    /// The kind's name ([`super::faults::KINDS`], or an agent kind).
    pub kind: String,
    /// The target's name (`agent` for the agent's own faults).
    pub target: String,
    /// When the injecting action began (a signal sent, a mode written): its effect comes
    /// no earlier.
    pub start: f64,
    /// When it was done (a killed process reaped): its effect comes no later.
    pub injected: f64,
    /// When the clearing action began.
    pub end: f64,
    /// When it was done (a restarted process up).
    pub cleared: f64,
}

/// One kubelet-style probe of the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeRecord {
    /// When it started.
    pub t: f64,
    /// Whose path (`agent` for `/livez`).
    pub target: String,
    /// Which probe.
    pub probe: Probe,
    /// The HTTP status; `None` when no answer came (refused, timeout).
    pub status: Option<u16>,
    /// Whether the kubelet counts it as a pass.
    pub ok: bool,
    /// The agent's reason for a failure (the body after `fail: `), or the error.
    pub reason: String,
    /// How long it took (ms).
    pub latency_ms: f64,
}

fn one() -> u32 {
    1
}

/// One run of the agent process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Life {
    /// 0 for the first.
    pub n: usize,
    /// Its pid.
    pub pid: u32,
    /// When it was spawned.
    pub spawned: f64,
    /// When its own `/livez` first passed.
    pub up: Option<f64>,
    /// When it was killed (`None`: it lived to the end).
    pub died: Option<f64>,
}

/// The agent's resident memory at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rss {
    /// Which life.
    pub life: usize,
    /// When.
    pub t: f64,
    /// `VmRSS` (KiB).
    pub kib: u64,
}

/// The starvation measured over `[from, to)` (s), as `Timeline::starvation` measures it,
/// for one scope: `agent` (the soak's own wake-ups and the agent's run-queue waits: what
/// delays an answer) or a target's name (those and the target's processes' waits: what
/// delays a verdict on that target), as a two-process e2e scenario measures it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Slice {
    /// `agent` or a target's name.
    pub scope: String,
    /// Start.
    pub from: f64,
    /// End.
    pub to: f64,
    /// The test's wake-up delays and the processes' run-queue waits, added up (s).
    pub starvation: f64,
}

/// A panic found in a process's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Panic {
    /// Which process (`agent`, `model`, `vllm-a`).
    pub who: String,
    /// The log line.
    pub line: String,
}

/// One line of `records.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    /// The run.
    Run(RunInfo),
    /// A fault.
    Fault(Fault),
    /// A probe.
    Probe(ProbeRecord),
    /// An agent life.
    Life(Life),
    /// An RSS sample.
    Rss(Rss),
    /// A starvation slice.
    Slice(Slice),
    /// A panic.
    Panic(Panic),
}

/// Everything a run recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Records {
    /// The run.
    pub run: RunInfo,
    /// Faults, by start.
    pub faults: Vec<Fault>,
    /// Probes, by start.
    pub probes: Vec<ProbeRecord>,
    /// Agent lives, in order.
    pub lives: Vec<Life>,
    /// RSS samples, in order.
    pub rss: Vec<Rss>,
    /// Starvation slices, in order, covering the run.
    pub slices: Vec<Slice>,
    /// Panics found.
    pub panics: Vec<Panic>,
}

/// Why kept records cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file cannot be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not a record.
    #[error("{path}:{line}: {source}")]
    Bad {
        /// The file.
        path: String,
        /// Its 1-based line number.
        line: usize,
        /// Why.
        source: serde_json::Error,
    },
    /// No `run` line.
    #[error("{0}: no `run` record")]
    NoRun(String),
}

impl Records {
    /// Writes `dir/records.jsonl`, one record a line.
    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut out = BufWriter::new(File::create(dir.join(FILE))?);
        let lines = std::iter::once(Line::Run(self.run.clone()))
            .chain(self.lives.iter().cloned().map(Line::Life))
            .chain(self.faults.iter().cloned().map(Line::Fault))
            .chain(self.panics.iter().cloned().map(Line::Panic))
            .chain(self.slices.iter().cloned().map(Line::Slice))
            .chain(self.rss.iter().cloned().map(Line::Rss))
            .chain(self.probes.iter().cloned().map(Line::Probe));
        for line in lines {
            serde_json::to_writer(&mut out, &line)?;
            out.write_all(b"\n")?;
        }
        out.flush()
    }

    /// Reads `dir/records.jsonl` (lines in any order; empty lines skipped).
    pub fn load(dir: &Path) -> Result<Records, ReadError> {
        let path = dir.join(FILE);
        let name = path.display().to_string();
        let io = |source| ReadError::Io {
            path: name.clone(),
            source,
        };
        let reader = BufReader::new(File::open(&path).map_err(io)?);
        let (mut run, mut faults, mut probes, mut lives, mut rss, mut slices, mut panics) =
            (None, vec![], vec![], vec![], vec![], vec![], vec![]);
        for (i, text) in reader.lines().enumerate() {
            let text = text.map_err(io)?;
            if text.trim().is_empty() {
                continue;
            }
            let line = serde_json::from_str(&text).map_err(|source| ReadError::Bad {
                path: name.clone(),
                line: i + 1,
                source,
            })?;
            match line {
                Line::Run(r) => run = Some(r),
                Line::Fault(f) => faults.push(f),
                Line::Probe(p) => probes.push(p),
                Line::Life(l) => lives.push(l),
                Line::Rss(r) => rss.push(r),
                Line::Slice(s) => slices.push(s),
                Line::Panic(p) => panics.push(p),
            }
        }
        let mut records = Records {
            run: run.ok_or_else(|| ReadError::NoRun(name.clone()))?,
            faults,
            probes,
            lives,
            rss,
            slices,
            panics,
        };
        records.sort();
        Ok(records)
    }

    /// Puts every list in time order (the judge relies on it).
    pub fn sort(&mut self) {
        let by = |a: f64, b: f64| a.total_cmp(&b);
        self.faults.sort_by(|a, b| by(a.start, b.start));
        self.probes.sort_by(|a, b| by(a.t, b.t));
        self.lives.sort_by_key(|l| l.n);
        self.rss.sort_by(|a, b| by(a.t, b.t));
        self.slices.sort_by(|a, b| by(a.from, b.from));
    }
}
