//! How the agent builds the `/status` document from one snapshot (plus the facts fixed at
//! start and the recent transitions): the one place that turns verdicts and state into it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::doc::*;
use crate::surfaces::text;
use crate::surfaces::ticker::{rfc3339, Transition, TransitionLog};
use vitals_core::sleep::Wake;
use vitals_core::snapshot::Snapshot;
use vitals_core::state::upstream::{CanaryResult, UpstreamState};
use vitals_core::upstreams::Action;
use vitals_core::verdict::{Answer, PidStatus, Probe, UpstreamVerdict};

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// What `/status` says about the agent besides its snapshot: fixed at start.
#[derive(Debug, Clone)]
pub struct AgentFacts {
    /// When the agent started (monotonic).
    pub started_at: Instant,
    /// When the agent started (wall clock).
    pub started_wall: SystemTime,
    /// The worker socket path.
    pub socket: PathBuf,
}

/// Everything `/status` renders besides the snapshot.
#[derive(Debug, Clone)]
pub struct StatusSource {
    /// Fixed facts.
    pub facts: AgentFacts,
    /// The recent verdict transitions.
    pub transitions: Arc<TransitionLog>,
}

impl StatusSource {
    /// Builds `/status` from `snapshot`.
    pub fn build(&self, snapshot: &Snapshot) -> StatusDoc {
        build(snapshot, &self.facts, self.transitions.list())
    }
}

/// Builds `/status` from a snapshot, the agent's facts and its recent transitions.
fn build(snapshot: &Snapshot, facts: &AgentFacts, transitions: Vec<Transition>) -> StatusDoc {
    let (state, v, now) = (&snapshot.state, &snapshot.verdicts, snapshot.at);
    let doc = |a: Answer| VerdictDoc {
        ok: a.ok(),
        reason: a.result.err().as_ref().map(text::failing),
    };
    let agg = |p| doc(v.aggregate(p));
    // A container's verdict as its probe answers it (on a group leader, with the group's).
    let answer = |p, name: &str| v.worker(p, name).map(doc);
    let agent = AgentDoc {
        version: crate::VERSION.to_owned(),
        started_at: rfc3339(facts.started_wall),
        uptime_seconds: secs(now.saturating_duration_since(facts.started_at)),
        socket: facts.socket.display().to_string(),
        shutting_down: snapshot.agent.shutting_down,
        live: agg(Probe::Live),
        ready: agg(Probe::Ready),
        startup: agg(Probe::Startup),
    };
    let workers = state
        .workers
        .iter()
        .filter_map(|(name, w)| {
            let wv = v.get(name.as_str())?;
            let instance = w.instance.as_ref().map(|i| {
                let p = &i.proc;
                let latest = p.latest.as_ref();
                InstanceDoc {
                    id: i.hello.instance.clone(),
                    version: i.hello.version.clone(),
                    pid: i.peer.pid,
                    hello_pid: i.hello.pid,
                    uid: i.peer.uid,
                    heartbeat_ms: i.hello.heartbeat_ms,
                    phase: i.phase().map(|p| p.as_str().to_owned()),
                    detail: i
                        .phase
                        .as_ref()
                        .map(|p| p.detail.clone())
                        .unwrap_or_default(),
                    progress: i.phase.as_ref().and_then(|p| p.progress.clone()),
                    checks: i.checks.values().cloned().collect(),
                    heartbeat_age_seconds: secs(now.saturating_duration_since(i.heartbeat_at)),
                    heartbeat: i.heartbeat,
                    disconnected_seconds: i
                        .disconnected_at
                        .map(|d| secs(now.saturating_duration_since(d))),
                    startup_seconds: i
                        .ready_at
                        .map(|r| secs(r.saturating_duration_since(i.first_hello_at))),
                    messages: i.messages,
                    connections: i.connections,
                    proc: ProcDoc {
                        enabled: p.is_on(),
                        off_reason: p.watched.as_ref().err().cloned(),
                        process: match p.pid_status() {
                            PidStatus::Exists => "exists",
                            PidStatus::Gone => "gone",
                            PidStatus::Unknown => "unknown",
                        }
                        .to_owned(),
                        state: latest.map(|s| s.state.to_string()),
                        cpu_seconds: latest.map(|s| s.cpu_seconds),
                        rss_bytes: latest.map(|s| s.rss_bytes),
                        threads: latest.map(|s| s.threads),
                        sample_age_seconds: latest
                            .map(|s| secs(now.saturating_duration_since(s.taken_at))),
                        error: p.error.clone(),
                    },
                }
            });
            Some(WorkerDoc {
                name: name.to_string(),
                expected: w.expected,
                connected: wv.connected,
                live: answer(Probe::Live, name.as_str())
                    .unwrap_or_else(|| VerdictDoc::of(&wv.live)),
                ready: answer(Probe::Ready, name.as_str())
                    .unwrap_or_else(|| VerdictDoc::of(&wv.ready)),
                startup: VerdictDoc::of(&wv.startup),
                diagnosis: wv.diagnosis.map(|d| d.as_str().to_owned()),
                restarts: w.restarts,
                instance,
            })
        })
        .collect();
    let upstreams = state
        .upstreams
        .iter()
        .filter_map(|(name, u)| {
            let mut doc = upstream_doc(u, v.get_upstream(name.as_str())?, now);
            // What the kubelet's probes get: a group leader's verdict included.
            doc.live = answer(Probe::Live, name.as_str())?;
            doc.ready = answer(Probe::Ready, name.as_str())?;
            Some(doc)
        })
        .collect();
    StatusDoc {
        agent,
        workers,
        upstreams,
        transitions,
        group: group_doc(snapshot),
    }
}

fn group_doc(snapshot: &Snapshot) -> Option<GroupDoc> {
    let (g, gv, now) = (
        snapshot.group.as_ref()?,
        snapshot.verdicts.group.as_ref()?,
        snapshot.at,
    );
    let age = |t: Instant| secs(now.saturating_duration_since(t));
    let members = g
        .members
        .iter()
        .zip(&gv.members)
        .map(|(m, status)| {
            let answer = m.answer.as_ref();
            MemberDoc {
                member: m.target.index,
                address: m.target.to_string(),
                state: status.as_str().to_owned(),
                live: answer.map(|a| a.report.live),
                ready: answer.map(|a| a.report.ready),
                reason: answer.and_then(|a| a.report.reason.clone()),
                instances: m.seen.clone(),
                recorded: m.recorded.clone(),
                instance_age_seconds: m.seen_changed_at.map(age),
                last_answer_seconds: answer.map(|a| age(a.at)),
                poll_error: m.failure.as_ref().map(|f| f.error.to_string()),
            }
        })
        .collect();
    Some(GroupDoc {
        formed: gv.formed,
        formed_seconds: g.formed_at.filter(|_| gv.formed).map(age),
        ready: VerdictDoc::of(&gv.ready),
        live: VerdictDoc::of(&gv.live),
        resets: g.resets,
        members,
    })
}

fn action_text(a: &Action) -> String {
    match a {
        Action::Http(h) => format!(
            "GET {}:{}{}",
            h.host.as_deref().unwrap_or(""),
            h.port,
            h.path
        ),
        Action::Tcp { port, host } => format!("tcp {}:{port}", host.as_deref().unwrap_or("")),
        Action::Grpc { port, service } if service.is_empty() => format!("grpc :{port}"),
        Action::Grpc { port, service } => format!("grpc :{port} {service}"),
    }
}

fn upstream_doc(u: &UpstreamState, uv: &UpstreamVerdict, now: Instant) -> UpstreamDoc {
    let probes = u
        .spec
        .probes
        .iter()
        .map(|(kind, spec)| {
            let last = u.probes.get(kind);
            UpstreamProbeDoc {
                probe: kind.label().to_owned(),
                action: action_text(&spec.action),
                period_seconds: secs(spec.period),
                timeout_seconds: secs(spec.timeout),
                result: last.map(|o| VerdictDoc::of(&o.result.as_ref().map(|_| ()))),
                age_seconds: last.map(|o| secs(now.saturating_duration_since(o.started))),
                latency_ms: last.map(|o| (o.latency.as_secs_f64() * 1e6).round() / 1e3),
            }
        })
        .collect();
    let metrics = u.spec.metrics.as_ref().map(|m| {
        let last = u.engines.last();
        let engines: Vec<EngineDoc> = u
            .engines
            .clocks()
            .map(|(id, clock)| {
                let r = last.and_then(|p| p.engines.get(id));
                EngineDoc {
                    engine: id.clone(),
                    work: r.and_then(|r| r.work.iter().flatten().copied().reduce(|a, b| a + b)),
                    busy: r.and_then(|r| r.busy),
                    pending: r.and_then(|r| r.pending),
                    busy_without_work_seconds: secs(clock.unmoved_shown()),
                }
            })
            .collect();
        UpstreamMetricsDoc {
            profile: m.profile.map(str::to_owned),
            endpoint: format!(":{}{}", m.port, m.path),
            work: last.and_then(|p| p.work()),
            busy_without_work_seconds: engines
                .iter()
                .map(|e| e.busy_without_work_seconds)
                .fold(0.0, f64::max),
            busy: last.and_then(|p| p.busy()),
            pending: last.and_then(|p| p.pending()),
            page_age_seconds: last.map(|p| secs(now.saturating_duration_since(p.at))),
            scrape_error: u.scrape_failure.as_ref().map(ToString::to_string),
            engines,
            sleep: u.sleep.asleep().map(|a| SleepDoc {
                seconds: secs(now.saturating_duration_since(a.since)),
                wakes: match a.wakes {
                    Wake::OnRequest => "request",
                    Wake::Operator => "operator",
                }
                .to_owned(),
            }),
            unread_while_idle_seconds: u
                .quiet_since
                .map(|q| secs(now.saturating_duration_since(q))),
        }
    });
    let p = &u.proc;
    let latest = p.latest.as_ref();
    UpstreamDoc {
        name: uv.name.to_string(),
        kind: "upstream".to_owned(),
        live: VerdictDoc::of(&uv.live),
        ready: VerdictDoc::of(&uv.ready),
        startup: VerdictDoc::of(&uv.startup),
        probes,
        profile: u
            .spec
            .metrics
            .as_ref()
            .and_then(|m| m.profile)
            .map(str::to_owned),
        metrics,
        proc: UpstreamProcDoc {
            pid: p.pid(),
            found_by: p
                .watched
                .as_ref()
                .ok()
                .map(|w| w.found_by.as_str().to_owned()),
            off_reason: p.watched.as_ref().err().cloned(),
            process: match uv.pid {
                PidStatus::Exists => "exists",
                PidStatus::Gone => "gone",
                PidStatus::Unknown => "unknown",
            }
            .to_owned(),
            state: latest.map(|s| s.state.to_string()),
            rss_bytes: latest.map(|s| s.rss_bytes),
        },
        load: u.load.moved_at.map(|_| UpstreamLoadDoc {
            loading: u.load.is_loading(),
            rss_bytes: u.load.rss_bytes,
            cpu_seconds: u.load.cpu_seconds,
            read_bytes: u.load.read.map(|r| r.rchar),
            storage_read_bytes: u.load.read.map(|r| r.storage),
            read_error: u.load.read_error.clone(),
            unmoved_seconds: secs(u.load.unmoved_for(now)),
        }),
        zombies: u
            .zombies
            .seen
            .iter()
            .map(|z| ZombieDoc {
                pid: z.child.pid,
                comm: z.child.comm.clone(),
                seconds: secs(now.saturating_duration_since(z.since)),
            })
            .collect(),
        canary: u.spec.canary.as_ref().map(|c| {
            let last = u.canary.last.as_ref();
            UpstreamCanaryDoc {
                request: format!(
                    "POST {}:{}{}",
                    c.host.as_deref().unwrap_or(""),
                    c.port,
                    c.path
                ),
                idle_seconds: secs(c.idle),
                deadline_seconds: secs(c.deadline),
                in_flight: u.canary.in_flight_since.is_some(),
                last_result: last.map(|r| r.result.label().to_owned()),
                last_error: last.and_then(|r| match &r.result {
                    CanaryResult::Error(e) => Some(e.clone()),
                    _ => None,
                }),
                last_age_seconds: last.map(|r| secs(now.saturating_duration_since(r.ended))),
                last_took_ms: last.map(|r| {
                    (r.ended.saturating_duration_since(r.started).as_secs_f64() * 1e6).round() / 1e3
                }),
                missed: u.canary.missed_at.is_some(),
            }
        }),
    }
}
