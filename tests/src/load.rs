//! A constant embedding load: several client threads, each sending one request after
//! another, every request recorded with exactly one outcome.
//!
//! What the scenarios assert on: no request failed except where the scenario expects
//! failures (a window of time), and none was lost: every request got exactly one complete
//! answer (no timeout, no response cut short, no bytes after the response).

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::client::{request_with, ClientError, Response};
use crate::timeline::Timeline;

/// Hidden size of all-MiniLM-L6-v2: every embedding has this many numbers.
pub const EMBEDDING_DIM: usize = 384;

/// How one request ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 200 with a well-formed embedding and nothing after it.
    Ok,
    /// A complete answer with another status (or a 200 that is not a valid embedding).
    Status(u16, String),
    /// No complete answer.
    Error(ClientError),
}

/// One request of the load.
#[derive(Debug, Clone)]
pub struct Record {
    /// `thread-seq`.
    pub id: String,
    /// When the client started it (timeline time).
    pub started: Duration,
    /// When the request had been written completely, if it was.
    pub sent: Option<Duration>,
    /// When its outcome was known.
    pub ended: Duration,
    /// Its one outcome.
    pub outcome: Outcome,
}

impl Record {
    /// Whether it got a good embedding.
    pub fn ok(&self) -> bool {
        self.outcome == Outcome::Ok
    }

    /// Whether it was lost: the client waited in vain or got a broken answer. A refused
    /// or reset connection is a failure the client sees at once, not a loss.
    pub fn lost(&self) -> bool {
        matches!(&self.outcome, Outcome::Error(e) if e.is_lost())
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sent = self.sent.map_or_else(
            || "never".to_string(),
            |s| format!("{:.3}s", s.as_secs_f64()),
        );
        write!(
            f,
            "request {} started {:.3}s sent {sent} ended {:.3}s: {:?}",
            self.id,
            self.started.as_secs_f64(),
            self.ended.as_secs_f64(),
            self.outcome
        )
    }
}

/// A running load.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    good: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<Vec<Record>>>,
}

/// Checks a response to an embedding request: 200, one embedding of the model's size, and
/// nothing after the response.
pub fn judge(response: &Response) -> Outcome {
    if response.trailing > 0 {
        return Outcome::Status(
            response.status,
            format!("{} bytes after the response", response.trailing),
        );
    }
    if response.status != 200 {
        return Outcome::Status(response.status, response.text());
    }
    let dim = response.json().ok().and_then(|v: Value| {
        v.get("data")?
            .get(0)?
            .get("embedding")?
            .as_array()
            .map(Vec::len)
    });
    if dim == Some(EMBEDDING_DIM) {
        Outcome::Ok
    } else {
        Outcome::Status(
            200,
            format!("not a {EMBEDDING_DIM}-dim embedding: {}", response.text()),
        )
    }
}

impl Load {
    /// Starts `threads` clients against the worker at `addr`; each pauses `pause` between
    /// requests, so the load is steady without starving the processes under test.
    pub fn start(
        addr: SocketAddr,
        threads: usize,
        pause: Duration,
        timeline: Arc<Timeline>,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let good = Arc::new(AtomicUsize::new(0));
        timeline.event(format!("load: {threads} client threads start"));
        let threads = (0..threads)
            .map(|t| {
                let (stop, good, timeline) =
                    (Arc::clone(&stop), Arc::clone(&good), Arc::clone(&timeline));
                thread::spawn(move || {
                    let mut records = Vec::new();
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let id = format!("{t}-{seq}");
                        let body = json!({
                            "input": format!("load request {id}: the quick brown fox jumps over the lazy dog")
                        })
                        .to_string();
                        let started = Instant::now();
                        let mut sent = None;
                        let result = request_with(
                            addr,
                            "POST",
                            "/v1/embeddings",
                            Some(("application/json", body.as_bytes())),
                            Duration::from_secs(30),
                            || sent = Some(Instant::now()),
                        );
                        let outcome = match result {
                            Ok(r) => judge(&r),
                            Err(e) => Outcome::Error(e),
                        };
                        let record = Record {
                            id,
                            started: timeline.at(started),
                            sent: sent.map(|s| timeline.at(s)),
                            ended: timeline.now(),
                            outcome,
                        };
                        let refused = matches!(&record.outcome, Outcome::Error(e) if e.is_refused());
                        if record.ok() {
                            good.fetch_add(1, Ordering::Relaxed);
                        } else if !refused {
                            timeline.event(format!("load: {record}"));
                        }
                        records.push(record);
                        seq += 1;
                        // Nobody listening yet (or any more): back off a little longer.
                        thread::sleep(if refused { pause.max(Duration::from_millis(50)) } else { pause });
                    }
                    records
                })
            })
            .collect();
        Load {
            stop,
            good,
            threads,
        }
    }

    /// Polls until the clients have had `n` good answers, so a scenario acts on a load
    /// that is really flowing; panics after `within`.
    pub fn await_ok(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.good.load(Ordering::Relaxed) < n {
            assert!(
                Instant::now() < deadline,
                "the load had only {} good answers after {within:?}, want {n}",
                self.good.load(Ordering::Relaxed)
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the clients (each finishes its current request) and returns every record.
    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut records: Vec<Record> = self
            .threads
            .into_iter()
            .flat_map(|t| t.join().expect("a load thread does not panic"))
            .collect();
        records.sort_by_key(|r| r.started);
        LoadReport { records }
    }
}

/// Every request of a load run.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// In order of start.
    pub records: Vec<Record>,
}

impl LoadReport {
    /// How many requests got a good embedding.
    pub fn ok(&self) -> usize {
        self.records.iter().filter(|r| r.ok()).count()
    }

    /// Requests that failed although `may_fail` says they must not, and every lost one.
    pub fn violations(&self, may_fail: impl Fn(&Record) -> bool) -> Vec<&Record> {
        self.records
            .iter()
            .filter(|r| r.lost() || (!r.ok() && !may_fail(r)))
            .collect()
    }

    /// Panics, listing the offenders, when any request failed outside `may_fail` or was
    /// lost; also asserts the load actually ran (`min_ok` good answers).
    pub fn assert_clean(&self, scenario: &str, min_ok: usize, may_fail: impl Fn(&Record) -> bool) {
        let bad = self.violations(may_fail);
        assert!(
            bad.is_empty(),
            "{scenario}: {} of {} requests failed where none may, or were lost:\n{}",
            bad.len(),
            self.records.len(),
            bad.iter()
                .map(|r| format!("  {r}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(
            self.ok() >= min_ok,
            "{scenario}: the load ran too little to prove anything: {} good answers of {} requests, want at least {min_ok}",
            self.ok(),
            self.records.len()
        );
    }

    /// A one-line summary for the timeline and the report.
    pub fn summary(&self) -> String {
        let count = |f: &dyn Fn(&Record) -> bool| self.records.iter().filter(|r| f(r)).count();
        format!(
            "{} requests: {} ok, {} error status, {} refused, {} reset, {} lost",
            self.records.len(),
            self.ok(),
            count(&|r| matches!(r.outcome, Outcome::Status(..))),
            count(&|r| matches!(&r.outcome, Outcome::Error(e) if e.is_refused())),
            count(&|r| matches!(&r.outcome, Outcome::Error(ClientError::Reset(_)))),
            count(&|r| r.lost()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &str, trailing: usize) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
            trailing,
        }
    }

    #[test]
    fn judges_answers() {
        let emb = format!(
            "{{\"data\":[{{\"embedding\":[{}],\"index\":0}}]}}",
            vec!["0.1"; EMBEDDING_DIM].join(",")
        );
        assert_eq!(judge(&response(200, &emb, 0)), Outcome::Ok);
        assert!(matches!(
            judge(&response(200, &emb, 5)),
            Outcome::Status(200, _)
        ));
        assert!(matches!(
            judge(&response(200, "{\"data\":[]}", 0)),
            Outcome::Status(200, _)
        ));
        assert!(matches!(
            judge(&response(503, "draining", 0)),
            Outcome::Status(503, _)
        ));
    }

    #[test]
    fn lost_and_unexpected_failures_are_violations() {
        let rec = |id: &str, outcome| Record {
            id: id.into(),
            started: Duration::ZERO,
            sent: None,
            ended: Duration::ZERO,
            outcome,
        };
        let report = LoadReport {
            records: vec![
                rec("ok", Outcome::Ok),
                rec("refused", Outcome::Error(ClientError::Refused("x".into()))),
                rec("reset", Outcome::Error(ClientError::Reset("x".into()))),
                rec("503", Outcome::Status(503, "x".into())),
                rec("lost", Outcome::Error(ClientError::Timeout("x".into()))),
            ],
        };
        let ids = |v: Vec<&Record>| v.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(report.violations(|_| true)), ["lost"]);
        assert_eq!(
            ids(report.violations(|_| false)),
            ["refused", "reset", "503", "lost"]
        );
    }
}
