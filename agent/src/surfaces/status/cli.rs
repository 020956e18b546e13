//! `vitals-agent status`: fetches `/status` with the agent's one HTTP client
//! ([`crate::net`]) and renders it as a table for an operator who `kubectl exec`s into the
//! pod (`--watch` redraws it, `--json` prints it raw).

use std::fmt::Write as _;
use std::time::Duration;

use clap::Args;
use vitals_proto::env;

use super::doc::*;

/// Flags of `vitals-agent status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The agent's HTTP address.
    #[arg(long, env = env::URL, default_value = "http://127.0.0.1:9180")]
    pub url: String,
    /// Redraw every second until interrupted.
    #[arg(long, env = env::WATCH)]
    pub watch: bool,
    /// Print the raw /status JSON instead of a table.
    #[arg(long, env = env::JSON)]
    pub json: bool,
}

/// Why `vitals-agent status` failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// `--url` is not `http://host:port[/prefix]`.
    #[error("--url {0:?}: expected http://HOST:PORT")]
    BadUrl(String),
    /// Connecting or talking to the agent failed.
    #[error("cannot reach the agent at {url}: {source}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The agent answered something that is not a status document.
    #[error("unexpected answer from {url} (HTTP {status}): {detail}")]
    BadAnswer {
        /// The URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// What was wrong.
        detail: String,
    },
}

/// The largest `/status` document the CLI reads (a few KiB per worker).
const STATUS_LIMIT: usize = 8 * 1024 * 1024;

/// Fetches `/status` once: `(raw JSON, parsed)`.
pub async fn fetch(url: &str) -> Result<(String, StatusDoc), StatusError> {
    let base = url.trim_end_matches('/');
    let uri: hyper::Uri = format!("{base}/status")
        .parse()
        .map_err(|_| StatusError::BadUrl(url.to_owned()))?;
    if uri.scheme_str() != Some("http") {
        return Err(StatusError::BadUrl(url.to_owned()));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| StatusError::BadUrl(url.to_owned()))?
        .clone();
    let unreachable = |e: Box<dyn std::error::Error + Send + Sync>| StatusError::Unreachable {
        url: url.to_owned(),
        source: e,
    };
    let path = uri.path_and_query().map_or("/status", |p| p.as_str());
    let exchange = crate::net::get_once(
        authority.host(),
        authority.port_u16().unwrap_or(80),
        path,
        &[],
        crate::net::BodyRead::Keep(STATUS_LIMIT),
    );
    let answer = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|e| unreachable(e.into()))?
        .map_err(|e| unreachable(e.into()))?;
    let (status, body) = (answer.status.as_u16(), answer.body);
    let bad = |detail: String| StatusError::BadAnswer {
        url: url.to_owned(),
        status,
        detail,
    };
    let text = String::from_utf8(body.to_vec()).map_err(|e| bad(e.to_string()))?;
    if status != 200 {
        return Err(bad(text.chars().take(200).collect()));
    }
    let doc = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    Ok((text, doc))
}

/// Runs `vitals-agent status` (needs a tokio runtime with IO and time).
pub async fn run(args: &StatusArgs) -> Result<(), StatusError> {
    loop {
        let (raw, doc) = fetch(&args.url).await?;
        let out = if args.json { raw } else { render(&doc) };
        if args.watch {
            // Clear the screen and go home, like `watch`.
            print!("\x1b[2J\x1b[H{out}");
        } else {
            print!("{out}");
        }
        if !args.json || args.watch {
            println!();
        }
        if !args.watch {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn duration_text(s: f64) -> String {
    let total = s.max(0.0);
    if total < 60.0 {
        return format!("{total:.1}s");
    }
    let t = total as u64;
    let (h, m, sec) = (t / 3600, t % 3600 / 60, t % 60);
    if h > 0 {
        format!("{h}h{m:02}m")
    } else {
        format!("{m}m{sec:02}s")
    }
}

fn bytes_text(b: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let mib = b as f64 / MIB;
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.0} MiB")
    }
}

fn phase_text(i: &InstanceDoc) -> String {
    let mut text = i.phase.clone().unwrap_or_else(|| "-".to_owned());
    if let Some(p) = &i.progress {
        match p.total.filter(|t| *t > 0) {
            Some(total) => {
                let pct = p.done as f64 * 100.0 / total as f64;
                let _ = write!(text, " {pct:.0}% ({}/{total} {})", p.done, p.unit);
            }
            None => {
                let _ = write!(text, " ({} {})", p.done, p.unit);
            }
        }
    }
    text.trim_end().to_owned()
}

/// Renders the document as the operator's table.
pub fn render(doc: &StatusDoc) -> String {
    let a = &doc.agent;
    let mut out = format!(
        "vitals-agent {}  up {}  live {}  ready {}  startup {}{}\n\n",
        a.version,
        duration_text(a.uptime_seconds),
        a.live.text(),
        a.ready.text(),
        a.startup.text(),
        if a.shutting_down {
            "  (SHUTTING DOWN)"
        } else {
            ""
        }
    );
    let header = [
        "WORKER",
        "PHASE",
        "LIVE",
        "READY",
        "STARTUP",
        "HEARTBEAT",
        "PID",
        "RSS",
        "RESTARTS",
    ];
    let mut rows: Vec<[String; 9]> = Vec::new();
    for w in &doc.workers {
        let i = w.instance.as_ref();
        let mut live = w.live.text();
        if let Some(d) = &w.diagnosis {
            let _ = write!(live, " ({d})");
        }
        rows.push([
            format!("{}{}", w.name, if w.expected { "" } else { "*" }),
            i.map_or_else(|| "(never connected)".to_owned(), phase_text),
            live,
            w.ready.text(),
            w.startup.text(),
            i.map_or_else(
                || "-".to_owned(),
                |i| {
                    let age = duration_text(i.heartbeat_age_seconds);
                    if w.connected {
                        age
                    } else {
                        format!("{age} (disconnected)")
                    }
                },
            ),
            i.map_or_else(
                || "-".to_owned(),
                |i| match (&i.proc.off_reason, i.proc.process.as_str()) {
                    (Some(_), _) => format!("{} (no /proc)", i.hello_pid),
                    (None, "gone") => format!("{} (gone)", i.pid),
                    (None, _) => i.pid.to_string(),
                },
            ),
            i.and_then(|i| i.proc.rss_bytes)
                .map_or_else(|| "-".to_owned(), bytes_text),
            w.restarts.to_string(),
        ]);
    }
    // A pod of upstreams only has no workers' table.
    if !rows.is_empty() || doc.upstreams.is_empty() {
        out.push_str(&table(header, rows));
    }
    if doc.workers.is_empty() && doc.upstreams.is_empty() {
        out.push_str("(no workers expected or connected)\n");
    }
    if doc.workers.iter().any(|w| !w.expected) {
        out.push_str("* not expected (--expect); counts for /readyz while connected\n");
    }
    let notes: Vec<String> = doc
        .workers
        .iter()
        .filter_map(|w| {
            let i = w.instance.as_ref()?;
            let failing: Vec<String> = i
                .checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{}: {}", c.name, c.message))
                .collect();
            let mut note = Vec::new();
            if !failing.is_empty() {
                note.push(format!("failing checks: {}", failing.join("; ")));
            }
            if !i.detail.is_empty() {
                note.push(format!("detail: {}", i.detail));
            }
            if let Some(why) = &i.proc.off_reason {
                note.push(format!("/proc off: {why}"));
            }
            (!note.is_empty()).then(|| format!("  {}: {}", w.name, note.join(" | ")))
        })
        .collect();
    if !notes.is_empty() {
        out.push('\n');
        out.push_str(&notes.join("\n"));
        out.push('\n');
    }
    if !doc.upstreams.is_empty() {
        if !doc.workers.is_empty() {
            out.push('\n');
        }
        out.push_str(&render_upstreams(&doc.upstreams));
    }
    if let Some(g) = &doc.group {
        out.push('\n');
        out.push_str(&render_group(g));
    }
    if !doc.transitions.is_empty() {
        out.push_str("\nrecent transitions:\n");
        for t in doc.transitions.iter().rev().take(8).rev() {
            let _ = writeln!(
                out,
                "  {}  {}/{}  {} -> {}",
                t.at,
                t.probe,
                t.target,
                t.from.as_deref().unwrap_or("-"),
                t.to
            );
        }
    }
    out
}

/// A leader's GROUP table: the group's verdicts, then each member's latest answer, how
/// long its processes have run and how long ago it answered.
fn render_group(g: &GroupDoc) -> String {
    let formed = match g.formed_seconds {
        Some(s) if g.formed => format!("formed {} ago", duration_text(s)),
        _ => "forming".to_owned(),
    };
    let mut out = format!(
        "GROUP  leader of {} member{}  {formed}  ready {}  live {}\n",
        g.members.len(),
        if g.members.len() == 1 { "" } else { "s" },
        g.ready.text(),
        g.live.text()
    );
    let header = [
        "MEMBER",
        "ADDRESS",
        "LIVE",
        "READY",
        "REASON",
        "INSTANCE",
        "LAST ANSWER",
    ];
    let yes_no = |b: Option<bool>| match b {
        Some(true) => "yes".to_owned(),
        Some(false) => "no".to_owned(),
        None => "-".to_owned(),
    };
    let rows: Vec<[String; 7]> = g
        .members
        .iter()
        .map(|m| {
            let restarted = m.recorded.as_ref().is_some_and(|r| {
                r.iter()
                    .any(|(c, i)| m.instances.get(c).is_some_and(|n| n != i))
            });
            let mut instance = m
                .instance_age_seconds
                .map_or_else(|| "-".to_owned(), duration_text);
            if restarted {
                instance.push_str(" (restarted)");
            }
            let last = match (m.last_answer_seconds, &m.poll_error) {
                (Some(s), None) => format!("{} ago", duration_text(s)),
                (Some(s), Some(e)) => format!("{} ago ({e})", duration_text(s)),
                (None, Some(e)) => format!("never ({e})"),
                (None, None) => "never".to_owned(),
            };
            let reason = if m.state == "unreachable" {
                "unreachable".to_owned()
            } else {
                m.reason.clone().unwrap_or_else(|| "-".to_owned())
            };
            [
                m.member.to_string(),
                m.address.clone(),
                yes_no(m.live),
                yes_no(m.ready),
                reason,
                instance,
                last,
            ]
        })
        .collect();
    out.push_str(&table(header, rows));
    out
}

/// The upstreams' table: verdicts, each probe's last result (age, latency), the metrics
/// (the work counter and how long it has stood still while busy) and the process.
fn render_upstreams(ups: &[UpstreamDoc]) -> String {
    let header = [
        "UPSTREAM",
        "LIVE",
        "READY",
        "STARTUP",
        "LAST PROBES",
        "METRICS",
        "LOAD",
        "PID",
    ];
    let rows: Vec<[String; 8]> = ups
        .iter()
        .map(|u| {
            let probes: Vec<String> = u
                .probes
                .iter()
                .map(|p| match (&p.result, p.age_seconds, p.latency_ms) {
                    (Some(r), Some(age), Some(ms)) => format!(
                        "{} {} {} ago {ms:.0}ms",
                        p.probe,
                        r.text(),
                        duration_text(age)
                    ),
                    _ => format!("{} (no result yet)", p.probe),
                })
                .collect();
            let metrics = u.metrics.as_ref().map_or_else(
                || "-".to_owned(),
                |m| {
                    let mut t = m.profile.clone().unwrap_or_else(|| "custom".to_owned());
                    match m.work {
                        Some(w) => {
                            let _ = write!(t, ": work {w}");
                            if m.busy_without_work_seconds > 0.0 {
                                let _ = write!(
                                    t,
                                    " (unmoved {} while busy)",
                                    duration_text(m.busy_without_work_seconds)
                                );
                            }
                            let _ = write!(
                                t,
                                ", {} busy, {} pending",
                                m.busy.unwrap_or(0.0),
                                m.pending.unwrap_or(0.0)
                            );
                            if m.engines.len() > 1 {
                                let _ = write!(t, ", {} engines", m.engines.len());
                                for e in m
                                    .engines
                                    .iter()
                                    .filter(|e| e.busy_without_work_seconds > 0.0)
                                {
                                    let _ = write!(
                                        t,
                                        "; engine {} unmoved {} while busy",
                                        e.engine.as_deref().unwrap_or("-"),
                                        duration_text(e.busy_without_work_seconds)
                                    );
                                }
                            }
                        }
                        None => t.push_str(": no page yet"),
                    }
                    if let Some(s) = &m.sleep {
                        let by = if s.wakes == "operator" {
                            "an operator's wake-up"
                        } else {
                            "a request"
                        };
                        let _ = write!(t, " (asleep {}, woken by {by})", duration_text(s.seconds));
                    }
                    if let Some(q) = m.unread_while_idle_seconds {
                        let _ = write!(
                            t,
                            " (unread {} while idle: a scrape would keep it awake)",
                            duration_text(q)
                        );
                    }
                    if let Some(e) = &m.scrape_error {
                        let _ = write!(t, " (scrape: {e})");
                    }
                    t
                },
            );
            let load = u.load.as_ref().map_or_else(|| "-".to_owned(), load_text);
            let pid = match (&u.proc.pid, &u.proc.found_by) {
                (Some(pid), Some(by)) if u.proc.process == "gone" => format!("{pid} (gone, {by})"),
                (Some(pid), Some(by)) => format!("{pid} ({by})"),
                _ => "- (no /proc)".to_owned(),
            };
            [
                u.name.clone(),
                u.live.text(),
                u.ready.text(),
                u.startup.text(),
                if probes.is_empty() {
                    "-".to_owned()
                } else {
                    probes.join(", ")
                },
                metrics,
                load,
                pid,
            ]
        })
        .collect();
    let mut out = table(header, rows);
    for u in ups {
        if let Some(why) = &u.proc.off_reason {
            let _ = writeln!(out, "  {}: /proc off: {why}", u.name);
        }
        for z in &u.zombies {
            let _ = writeln!(
                out,
                "  {}: child {} {} unreaped (zombie) for {}",
                u.name,
                z.comm,
                z.pid,
                duration_text(z.seconds)
            );
        }
        if let Some(c) = &u.canary {
            let last = match (&c.last_result, c.last_age_seconds, c.last_took_ms) {
                (Some(r), Some(age), Some(ms)) => format!(
                    "last {r}{} {} ago in {ms:.0}ms",
                    c.last_error
                        .as_ref()
                        .map_or_else(String::new, |e| format!(" ({e})")),
                    duration_text(age)
                ),
                _ => "none sent yet".to_owned(),
            };
            let _ = writeln!(
                out,
                "  {}: canary {} after {} idle, deadline {}: {last}{}",
                u.name,
                c.request,
                duration_text(c.idle_seconds),
                duration_text(c.deadline_seconds),
                if c.in_flight { ", one in flight" } else { "" }
            );
        }
    }
    out
}

/// The LOAD cell: what the process's load moved (SPEC §12), and how long nothing has.
fn load_text(l: &UpstreamLoadDoc) -> String {
    let mut t = format!(
        "rss {}, cpu {}",
        l.rss_bytes.map_or_else(|| "?".to_owned(), bytes_text),
        l.cpu_seconds.map_or_else(|| "?".to_owned(), duration_text)
    );
    match (l.read_bytes, &l.read_error) {
        (Some(b), _) => {
            let _ = write!(t, ", read {}", bytes_text(b));
        }
        (None, Some(_)) => t.push_str(", read unreadable"),
        (None, None) => {}
    }
    if l.loading {
        let _ = write!(t, " (unmoved {})", duration_text(l.unmoved_seconds));
    } else {
        t.push_str(" (loaded)");
    }
    t
}

/// `header` and `rows` as left-aligned columns two spaces apart, each as wide as its widest
/// cell, one line each (no trailing blanks).
fn table<const N: usize>(header: [&str; N], rows: Vec<[String; N]>) -> String {
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for cells in std::iter::once(header.map(str::to_owned)).chain(rows) {
        let mut l = String::new();
        for (cell, w) in cells.iter().zip(widths) {
            let _ = write!(l, "{cell:<w$}  ");
        }
        out.push_str(l.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use vitals_proto::message::{CheckReport, Progress};

    use super::*;

    fn doc() -> StatusDoc {
        let ok = VerdictDoc {
            ok: true,
            reason: None,
        };
        let fail = |r: &str| VerdictDoc {
            ok: false,
            reason: Some(r.into()),
        };
        StatusDoc {
            upstreams: Vec::new(),
            group: None,
            agent: AgentDoc {
                version: "0.1.0".into(),
                started_at: "2024-01-01T00:00:00.000Z".into(),
                uptime_seconds: 125.0,
                socket: "/run/vitals/agent.sock".into(),
                shutting_down: false,
                live: ok.clone(),
                ready: fail("model: phase: loading"),
                startup: fail("model: not_started"),
            },
            workers: vec![WorkerDoc {
                name: "model".into(),
                expected: true,
                connected: true,
                live: ok.clone(),
                ready: fail("phase: loading"),
                startup: fail("not_started"),
                diagnosis: None,
                restarts: 2,
                instance: Some(InstanceDoc {
                    id: "1-abc".into(),
                    version: "0.1.0".into(),
                    pid: 321,
                    hello_pid: 321,
                    uid: 0,
                    heartbeat_ms: 1000,
                    phase: Some("loading".into()),
                    detail: "weights".into(),
                    progress: Some(Progress {
                        done: 45,
                        total: Some(100),
                        unit: "MiB".into(),
                    }),
                    checks: vec![CheckReport {
                        name: "device".into(),
                        ok: false,
                        message: "no GPU".into(),
                    }],
                    heartbeat_age_seconds: 0.4,
                    heartbeat: None,
                    disconnected_seconds: None,
                    startup_seconds: None,
                    messages: 10,
                    connections: 1,
                    proc: ProcDoc {
                        enabled: true,
                        off_reason: None,
                        process: "exists".into(),
                        state: Some("S".into()),
                        cpu_seconds: Some(1.5),
                        rss_bytes: Some(512 * 1024 * 1024),
                        threads: Some(9),
                        sample_age_seconds: Some(0.2),
                        error: None,
                    },
                }),
            }],
            transitions: vec![],
        }
    }

    #[test]
    fn table_shows_phase_progress_verdicts_and_process() {
        let out = render(&doc());
        assert!(out.contains("up 2m05s"), "{out}");
        assert!(out.contains("ready fail: model: phase: loading"), "{out}");
        let row = out.lines().find(|l| l.starts_with("model")).expect("row");
        for want in [
            "loading 45% (45/100 MiB)",
            "fail: phase: loading",
            "0.4s",
            "321",
            "512 MiB",
            "2",
        ] {
            assert!(row.contains(want), "{want:?} missing in {row:?}");
        }
        assert!(out.contains("failing checks: device: no GPU"), "{out}");
    }

    #[test]
    fn document_round_trips() {
        let d = doc();
        let text = serde_json::to_string(&d).expect("serialises");
        assert_eq!(serde_json::from_str::<StatusDoc>(&text).expect("parses"), d);
    }

    #[test]
    fn upstreams_show_their_probes_metrics_and_process() {
        let ok = VerdictDoc {
            ok: true,
            reason: None,
        };
        let stalled = VerdictDoc {
            ok: false,
            reason: Some("loop_stalled".into()),
        };
        let mut d = doc();
        d.workers.clear();
        d.upstreams = vec![UpstreamDoc {
            name: "vllm".into(),
            kind: "upstream".into(),
            live: stalled.clone(),
            ready: stalled,
            startup: ok.clone(),
            probes: vec![UpstreamProbeDoc {
                probe: "liveness".into(),
                action: "GET :8000/health".into(),
                period_seconds: 10.0,
                timeout_seconds: 1.0,
                result: Some(ok),
                age_seconds: Some(3.2),
                latency_ms: Some(2.4),
            }],
            profile: Some("vllm".into()),
            metrics: Some(UpstreamMetricsDoc {
                profile: Some("vllm".into()),
                endpoint: ":8000/metrics".into(),
                work: Some(18436.0),
                busy_without_work_seconds: 41.0,
                busy: Some(2.0),
                pending: Some(1.0),
                page_age_seconds: Some(0.5),
                scrape_error: None,
                engines: ["0", "1", "2", "3"]
                    .iter()
                    .map(|e| EngineDoc {
                        engine: Some((*e).to_owned()),
                        work: Some(4609.0),
                        busy: Some(0.5),
                        pending: Some(0.25),
                        busy_without_work_seconds: if *e == "3" { 41.0 } else { 0.0 },
                    })
                    .collect(),
                sleep: None,
                unread_while_idle_seconds: None,
            }),
            proc: UpstreamProcDoc {
                pid: Some(4242),
                found_by: Some("socket".into()),
                off_reason: None,
                process: "exists".into(),
                state: Some("S".into()),
                rss_bytes: Some(1 << 30),
            },
            load: Some(UpstreamLoadDoc {
                loading: true,
                rss_bytes: Some(1 << 30),
                cpu_seconds: Some(34.0),
                read_bytes: None,
                storage_read_bytes: None,
                read_error: Some("not readable".into()),
                unmoved_seconds: 3.0,
            }),
            zombies: vec![ZombieDoc {
                pid: 4300,
                comm: "triton_python_b".into(),
                seconds: 12.0,
            }],
            canary: Some(UpstreamCanaryDoc {
                request: "POST :8000/v1/completions".into(),
                idle_seconds: 60.0,
                deadline_seconds: 10.0,
                in_flight: false,
                last_result: Some("deadline".into()),
                last_error: None,
                last_age_seconds: Some(5.0),
                last_took_ms: Some(10000.0),
                missed: true,
            }),
        }];
        let out = render(&d);
        assert!(!out.contains("WORKER"), "no empty workers' table: {out}");
        let row = out.lines().find(|l| l.starts_with("vllm")).expect("row");
        for want in [
            "fail: loop_stalled",
            "liveness ok 3.2s ago 2ms",
            "vllm: work 18436 (unmoved 41.0s while busy), 2 busy, 1 pending, 4 engines; engine 3 unmoved 41.0s while busy",
            "4242 (socket)",
            "rss 1.0 GiB, cpu 34.0s, read unreadable (unmoved 3.0s)",
        ] {
            assert!(row.contains(want), "{want:?} missing in {row:?}");
        }
        for want in [
            "  vllm: child triton_python_b 4300 unreaped (zombie) for 12.0s",
            "  vllm: canary POST :8000/v1/completions after 1m00s idle, deadline 10.0s: last deadline 5.0s ago in 10000ms",
        ] {
            assert!(out.lines().any(|l| l == want), "{want:?} missing in {out}");
        }
        let text = serde_json::to_string(&d).expect("serialises");
        assert_eq!(serde_json::from_str::<StatusDoc>(&text).expect("parses"), d);
        // A document from an agent without upstreams still parses.
        let mut old: serde_json::Value = serde_json::to_value(doc()).expect("value");
        old.as_object_mut().expect("object").remove("upstreams");
        let parsed: StatusDoc = serde_json::from_value(old).expect("parses");
        assert!(parsed.upstreams.is_empty());
    }

    #[test]
    fn a_leader_shows_its_group_and_which_member_broke_it() {
        let mut d = doc();
        let member = |i: usize, state: &str, live: Option<bool>, reason: Option<&str>| MemberDoc {
            member: i,
            address: format!("vllm-0-{i}.vllm:9180"),
            state: state.into(),
            live,
            ready: live,
            reason: reason.map(Into::into),
            instances: [("ray".to_owned(), format!("{i}:9"))].into(),
            recorded: Some(
                [(
                    "ray".to_owned(),
                    format!("{i}:{}", if i == 2 { 8 } else { 9 }),
                )]
                .into(),
            ),
            instance_age_seconds: Some(4.0),
            last_answer_seconds: Some(0.4),
            poll_error: None,
        };
        d.group = Some(GroupDoc {
            formed: true,
            formed_seconds: Some(300.0),
            ready: VerdictDoc {
                ok: false,
                reason: Some("group: member 3 unreachable 4.4s".into()),
            },
            live: VerdictDoc {
                ok: false,
                reason: Some("group_broken: member 2 restarted".into()),
            },
            resets: 0,
            members: vec![
                member(1, "live", Some(true), None),
                member(2, "live", Some(true), None),
                MemberDoc {
                    last_answer_seconds: Some(4.4),
                    poll_error: Some("timeout".into()),
                    ..member(3, "unreachable", Some(true), None)
                },
            ],
        });
        let text = render(&d);
        for want in [
            "GROUP  leader of 3 members  formed 5m00s ago  ready fail: group: member 3 unreachable 4.4s  live fail: group_broken: member 2 restarted",
            "MEMBER  ADDRESS             LIVE  READY  REASON       INSTANCE          LAST ANSWER",
            "1       vllm-0-1.vllm:9180  yes   yes    -            4.0s              0.4s ago",
            "2       vllm-0-2.vllm:9180  yes   yes    -            4.0s (restarted)  0.4s ago",
            "3       vllm-0-3.vllm:9180  yes   yes    unreachable  4.0s              4.4s ago (timeout)",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let back: StatusDoc =
            serde_json::from_str(&serde_json::to_string(&d).expect("json")).expect("parses");
        assert_eq!(back, d);
    }
}
