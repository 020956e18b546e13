//! The `--upstreams` / `VITALS_UPSTREAMS` JSON (SPEC §8), read into the types the probers
//! run: each upstream container's original Kubernetes probes, its metrics source and its
//! process, validated once, at start.
//!
//! The JSON's shape is [`schema`] (the types inject writes with); serde and
//! `serde_path_to_error` name the field of a shape error, and [`parse`] adds what the shape
//! cannot say (named ports resolved, no `exec` or `https`, one handler per probe, a
//! header's variable set), naming the field the same way: `upstreams.vllm.livenessProbe.
//! httpGet.port: ...` is found by a person reading `kubectl logs`. [`profiles`] are the
//! engines the `metrics` object can name.

pub mod canary;
pub mod profiles;
pub mod schema;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use vitals_proto::WorkerName;

use self::canary::CanarySpec;
use self::profiles::Profile;
use crate::expo;

/// Kubernetes' default `periodSeconds`.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(10);
/// Kubernetes' default `timeoutSeconds`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// Which of a container's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProbeKind {
    /// `startupProbe`.
    Startup,
    /// `livenessProbe`.
    Liveness,
    /// `readinessProbe`.
    Readiness,
}

impl ProbeKind {
    /// Every kind, in the order the kubelet starts them.
    pub const ALL: [ProbeKind; 3] = [Self::Startup, Self::Liveness, Self::Readiness];

    /// The pod spec's key for this probe.
    pub fn key(self) -> &'static str {
        match self {
            Self::Startup => "startupProbe",
            Self::Liveness => "livenessProbe",
            Self::Readiness => "readinessProbe",
        }
    }

    /// The label used in metrics and `/status` (`startup`, `liveness`, `readiness`).
    pub fn label(self) -> &'static str {
        match self {
            Self::Startup => "startup",
            Self::Liveness => "liveness",
            Self::Readiness => "readiness",
        }
    }
}

/// An HTTP GET probe (`httpGet`; scheme HTTP only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGet {
    /// Request path (with query), `/` when absent.
    pub path: String,
    /// Port.
    pub port: u16,
    /// `host`: where to connect instead of the pod IP.
    pub host: Option<String>,
    /// `httpHeaders`, in order, parsed once here (a `Host` header overrides the Host line).
    pub headers: Vec<(http::header::HeaderName, http::header::HeaderValue)>,
}

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `httpGet`.
    Http(HttpGet),
    /// `tcpSocket`: connect and close.
    Tcp {
        /// Port.
        port: u16,
        /// `host`, instead of the pod IP.
        host: Option<String>,
    },
    /// `grpc`: `grpc.health.v1.Health/Check`.
    Grpc {
        /// Port.
        port: u16,
        /// `service` in the request (empty: the server as a whole).
        service: String,
    },
}

impl Action {
    /// The port the probe talks to.
    pub fn port(&self) -> u16 {
        match self {
            Self::Http(h) => h.port,
            Self::Tcp { port, .. } | Self::Grpc { port, .. } => *port,
        }
    }
}

/// One probe as the agent runs it. Thresholds and the initial delay stay with the kubelet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// What to do.
    pub action: Action,
    /// `periodSeconds`.
    pub period: Duration,
    /// `timeoutSeconds`: the whole probe, connect to last byte.
    pub timeout: Duration,
}

/// Where an upstream's Prometheus metrics are and which series mean what (SPEC §8 `M`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSpec {
    /// The built-in profile this came from, for `/status`; `None` for a custom one.
    pub profile: Option<&'static str>,
    /// Where to connect: the `host` of the httpGet probe the port comes from (a server
    /// bound to 127.0.0.1 while `POD_IP` is set, SPEC §8), else where the probes go.
    pub host: Option<String>,
    /// Port of the metrics endpoint.
    pub port: u16,
    /// Path of the metrics endpoint.
    pub path: String,
    /// Counters that move while the engine works.
    pub work: Vec<String>,
    /// Gauges of requests being worked on.
    pub busy: Vec<String>,
    /// Gauges of requests waiting.
    pub pending: Vec<String>,
    /// Headers sent with every scrape, values already read from the environment.
    pub headers: Vec<ScrapeHeader>,
    /// Whether a scrape may reuse the previous scrape's connection (see [`Profile`]).
    pub keep_alive: bool,
    /// Whether the server's engine loop itself answers the metrics endpoint, so that
    /// scrapes timing out while the probes pass are a hung engine (SPEC §8, llama.cpp).
    pub engine_answers: bool,
    /// The label naming each engine of a data-parallel server (SPEC §12): series are
    /// summed per value of it, and each engine has its own stall clock.
    pub engine_label: Option<String>,
    /// How the server sleeps, where it can (SPEC §12).
    pub sleep: Option<SleepSpec>,
}

/// How an upstream sleeps (SPEC §12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SleepSpec {
    /// Where it says so and what wakes it.
    pub signal: profiles::SleepSignal,
    /// After how long idle it sleeps by itself, from the signal's `idle_flag` on the
    /// recorded command line (zero when the value is a `$(VAR)` the kubelet expands);
    /// `None`: it does not sleep by itself, or its command line was not recorded.
    pub idle_after: Option<Duration>,
}

impl SleepSpec {
    /// `signal`'s idle time from a recorded command line (`--flag N` or `--flag=N`, N in
    /// seconds; a negative N turns the idle sleep off, as llama.cpp's `-1` does).
    pub fn from_cmdline(signal: profiles::SleepSignal, cmdline: &[String]) -> Self {
        let flag = signal.idle_flag();
        let value = cmdline.iter().enumerate().find_map(|(i, arg)| {
            if arg == flag {
                Some(cmdline.get(i + 1).map_or("", String::as_str))
            } else {
                arg.strip_prefix(flag).and_then(|v| v.strip_prefix('='))
            }
        });
        let idle_after = value.and_then(|v| {
            if v.contains("$(") {
                return Some(Duration::ZERO);
            }
            let secs: f64 = v.parse().ok()?;
            (secs >= 0.0 && secs.is_finite()).then(|| Duration::from_secs_f64(secs))
        });
        Self { signal, idle_after }
    }
}

/// A header sent with every scrape (credentials). Its `Debug` hides the value: it is a
/// secret and must never reach a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct ScrapeHeader {
    /// Header name.
    pub name: http::header::HeaderName,
    /// Header value (the variable's value after the prefix), marked sensitive.
    pub value: http::header::HeaderValue,
}

impl fmt::Debug for ScrapeHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: <redacted>", self.name)
    }
}

/// How the upstream's process is recognised in /proc (SPEC §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// The container's command and args as inject recorded them; never empty.
    pub cmdline: Vec<String>,
}

/// One upstream container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpec {
    /// The container's name, its name in the agent.
    pub name: WorkerName,
    /// Its probes; a probe it did not have passes.
    pub probes: BTreeMap<ProbeKind, ProbeSpec>,
    /// Its metrics, if any.
    pub metrics: Option<MetricsSpec>,
    /// Its process's command line, when recorded.
    pub process: Option<ProcessSpec>,
    /// A zombie child fails its liveness too: the server cannot recover the child
    /// ([`profiles::children_unrecoverable`]).
    pub children_unrecoverable: bool,
    /// Its opt-in canary (SPEC §12), when asked for.
    pub canary: Option<CanarySpec>,
}

impl UpstreamSpec {
    /// The ports its probes use, startup first, duplicates removed: where its process is
    /// looked for.
    pub fn probe_ports(&self) -> Vec<u16> {
        let mut ports = Vec::new();
        for p in self.probes.values() {
            let port = p.action.port();
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
        ports
    }
}

/// Why the upstreams configuration was refused. The message names the field.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamsError {
    /// Not JSON at all (the message has the line and column).
    #[error("upstreams: invalid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// A field is wrong: its shape (from serde) or its meaning (from [`parse`]).
    #[error("upstreams{}: {problem}", dotted(field))]
    Field {
        /// Where, as `container.probe.key` (empty: the document itself).
        field: String,
        /// What is wrong.
        problem: String,
    },
}

fn dotted(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!(".{field}")
    }
}

fn bad(field: impl Into<String>, problem: impl Into<String>) -> UpstreamsError {
    UpstreamsError::Field {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Parses and validates the JSON text; `expect` are the protocol workers (`--expect`),
/// whose names an upstream may not take. Metrics header values (`valueFromEnv`) come from
/// `env`: the agent passes its process environment, tests a lookup of their own.
pub fn parse(
    text: &str,
    expect: &[WorkerName],
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<UpstreamSpec>, UpstreamsError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let doc: schema::Upstreams = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            UpstreamsError::Json(inner)
        } else {
            // serde_path_to_error spells the document itself ".".
            bad(field.trim_start_matches('.'), inner.to_string())
        }
    })?;
    de.end().map_err(UpstreamsError::Json)?;
    let mut out = Vec::with_capacity(doc.len());
    for (name, entry) in doc {
        let worker = WorkerName::parse(name.as_str())
            .map_err(|e| bad(name.as_str(), format!("not a valid container name: {e}")))?;
        if expect.contains(&worker) {
            return Err(bad(
                name.as_str(),
                "also named by --expect: a container is either a protocol worker or an upstream",
            ));
        }
        let mut probes = BTreeMap::new();
        for (kind, probe_json) in [
            (ProbeKind::Startup, &entry.startup_probe),
            (ProbeKind::Liveness, &entry.liveness_probe),
            (ProbeKind::Readiness, &entry.readiness_probe),
        ] {
            if let Some(p) = probe_json {
                probes.insert(kind, probe(p, &format!("{name}.{}", kind.key()))?);
            }
        }
        let mut metrics = match &entry.metrics {
            None => None,
            Some(m) => Some(metrics(m, &format!("{name}.metrics"), &probes, &env)?),
        };
        let process = match entry.process {
            None => None,
            Some(p) if p.cmdline.is_empty() => {
                return Err(bad(
                    format!("{name}.process.cmdline"),
                    "must name at least the program",
                ))
            }
            Some(p) => Some(ProcessSpec { cmdline: p.cmdline }),
        };
        // The idle sleep is a server flag: read it from the recorded command line.
        if let (Some(m), Some(p)) = (&mut metrics, &process) {
            if let Some(sleep) = &mut m.sleep {
                *sleep = SleepSpec::from_cmdline(sleep.signal, &p.cmdline);
            }
        }
        let children_unrecoverable = metrics
            .as_ref()
            .and_then(|m| m.profile)
            .is_some_and(profiles::children_unrecoverable);
        let canary = match &entry.canary {
            None => None,
            Some(c) => {
                let http = ProbeKind::ALL.iter().find_map(|k| match probes.get(k) {
                    Some(ProbeSpec {
                        action: Action::Http(h),
                        ..
                    }) => Some((h.host.clone(), h.port)),
                    _ => None,
                });
                let profile = metrics.as_ref().and_then(|m| m.profile);
                Some(canary::resolve(
                    c,
                    &format!("{name}.canary"),
                    profile,
                    http,
                )?)
            }
        };
        out.push(UpstreamSpec {
            name: worker,
            probes,
            metrics,
            process,
            children_unrecoverable,
            canary,
        });
    }
    Ok(out)
}

fn seconds(value: Option<u64>, field: &str, default: Duration) -> Result<Duration, UpstreamsError> {
    match value {
        None => Ok(default),
        Some(n) if (1..=86_400).contains(&n) => Ok(Duration::from_secs(n)),
        Some(_) => Err(bad(
            field,
            "must be a whole number of seconds from 1 to 86400",
        )),
    }
}

fn port(p: &schema::Port, field: &str) -> Result<u16, UpstreamsError> {
    let field = format!("{field}.port");
    match p {
        schema::Port::Number(n) => u16::try_from(*n)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad(field, "must be a port number from 1 to 65535")),
        schema::Port::Name(s) => Err(bad(
            field,
            format!(
                "named port {s:?} must be resolved to its number (vitals-agent inject does this)"
            ),
        )),
    }
}

fn request_path(path: Option<&str>, field: &str) -> Result<String, UpstreamsError> {
    let path = match path {
        None => "/".to_string(),
        Some(p) if p.starts_with('/') => p.to_string(),
        Some(p) => format!("/{p}"),
    };
    if path.parse::<http::Uri>().is_err() {
        return Err(bad(field, "not a valid request path"));
    }
    Ok(path)
}

fn non_empty(s: &Option<String>) -> Option<String> {
    s.clone().filter(|s| !s.is_empty())
}

fn probe(p: &schema::Probe, field: &str) -> Result<ProbeSpec, UpstreamsError> {
    if p.exec.is_some() {
        return Err(bad(
            format!("{field}.exec"),
            "exec probes run inside the container; leave them on the container (inject does)",
        ));
    }
    let handlers: Vec<&str> = [
        ("httpGet", p.http_get.is_some()),
        ("tcpSocket", p.tcp_socket.is_some()),
        ("grpc", p.grpc.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, present)| present.then_some(k))
    .collect();
    let action = match (&p.http_get, &p.tcp_socket, &p.grpc) {
        (Some(h), None, None) => {
            let f = format!("{field}.httpGet");
            if let Some(scheme) = &h.scheme {
                if !scheme.eq_ignore_ascii_case("http") {
                    return Err(bad(
                        format!("{f}.scheme"),
                        format!("{scheme} is not supported: the agent speaks no TLS; leave https probes on the container"),
                    ));
                }
            }
            let mut headers = Vec::with_capacity(h.http_headers.len());
            for (i, header) in h.http_headers.iter().enumerate() {
                match (
                    http::header::HeaderName::from_bytes(header.name.as_bytes()),
                    http::header::HeaderValue::from_str(&header.value),
                ) {
                    (Ok(name), Ok(value)) => headers.push((name, value)),
                    _ => {
                        return Err(bad(
                            format!("{f}.httpHeaders[{i}]"),
                            "not a valid HTTP header",
                        ))
                    }
                }
            }
            Action::Http(HttpGet {
                path: request_path(h.path.as_deref(), &format!("{f}.path"))?,
                port: port(&h.port, &f)?,
                host: non_empty(&h.host),
                headers,
            })
        }
        (None, Some(t), None) => Action::Tcp {
            port: port(&t.port, &format!("{field}.tcpSocket"))?,
            host: non_empty(&t.host),
        },
        (None, None, Some(g)) => Action::Grpc {
            port: port(&g.port, &format!("{field}.grpc"))?,
            service: g.service.clone().unwrap_or_default(),
        },
        (None, None, None) => {
            return Err(bad(
                field,
                "no handler: expected one of httpGet, tcpSocket, grpc",
            ))
        }
        _ => {
            return Err(bad(
                field,
                format!("several handlers ({}): expected one", handlers.join(", ")),
            ))
        }
    };
    Ok(ProbeSpec {
        action,
        period: seconds(
            p.period_seconds,
            &format!("{field}.periodSeconds"),
            DEFAULT_PERIOD,
        )?,
        timeout: seconds(
            p.timeout_seconds,
            &format!("{field}.timeoutSeconds"),
            DEFAULT_TIMEOUT,
        )?,
    })
}

fn metric_names(names: &[String], field: &str) -> Result<Vec<String>, UpstreamsError> {
    match names.iter().position(|n| !expo::is_metric_name(n)) {
        Some(i) => Err(bad(
            format!("{field}[{i}]"),
            "must be a list of metric names",
        )),
        None => Ok(names.to_vec()),
    }
}

fn builtin_profile(name: &str, field: &str) -> Result<&'static Profile, UpstreamsError> {
    profiles::builtin(name).ok_or_else(|| {
        bad(
            field,
            format!(
                "unknown profile {name:?} (built in: {})",
                profiles::names().join(", ")
            ),
        )
    })
}

/// Each header's value from the environment; an unset variable is refused by name (the
/// variable's, never its value).
fn scrape_headers(
    headers: &[schema::MetricsHeader],
    field: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Vec<ScrapeHeader>, UpstreamsError> {
    let mut out = Vec::with_capacity(headers.len());
    for (i, h) in headers.iter().enumerate() {
        let hf = format!("{field}.headers[{i}]");
        let name = http::header::HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| bad(format!("{hf}.name"), "not a valid HTTP header name"))?;
        let value = env(&h.value_from_env).ok_or_else(|| {
            bad(
                format!("{hf}.valueFromEnv"),
                format!(
                    "the agent's environment has no variable {}",
                    h.value_from_env
                ),
            )
        })?;
        let text = format!("{}{value}", h.prefix.as_deref().unwrap_or(""));
        let mut value = http::header::HeaderValue::from_str(&text).map_err(|_| {
            bad(
                format!("{hf}.valueFromEnv"),
                format!(
                    "the value of {} (with the prefix) is not a valid HTTP header value",
                    h.value_from_env
                ),
            )
        })?;
        value.set_sensitive(true);
        out.push(ScrapeHeader { name, value });
    }
    Ok(out)
}

fn metrics(
    m: &schema::Metrics,
    field: &str,
    probes: &BTreeMap<ProbeKind, ProbeSpec>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<MetricsSpec, UpstreamsError> {
    // The first httpGet probe's port is where a profile scrapes unless the server has its
    // own metrics port.
    let http_probe = ProbeKind::ALL.iter().find_map(|k| match probes.get(k) {
        Some(ProbeSpec {
            action: Action::Http(h),
            ..
        }) => Some(h),
        _ => None,
    });
    let http_port = http_probe.map(|h| h.port);
    let host = http_probe.and_then(|h| h.host.clone());
    let no_port = |what: &str| {
        bad(
            field,
            format!("{what} needs an httpGet probe to take the port from"),
        )
    };
    match m {
        schema::Metrics::Profile(name) => {
            let p = builtin_profile(name, field)?;
            let port = p
                .port
                .or(http_port)
                .ok_or_else(|| no_port(&format!("profile {name}")))?;
            Ok(from_profile(p, host, port, p.path.to_string(), Vec::new()))
        }
        schema::Metrics::Custom(c) => {
            let profile = match &c.profile {
                Some(name) => Some(builtin_profile(name, &format!("{field}.profile"))?),
                None => None,
            };
            let port = match &c.port {
                Some(p) => port(p, field)?,
                None => match profile.and_then(|p| p.port).or(http_port) {
                    Some(p) => p,
                    None => {
                        return Err(bad(
                            format!("{field}.port"),
                            "missing, and no httpGet probe to take it from",
                        ))
                    }
                },
            };
            let path = match (&c.path, profile) {
                (Some(p), _) => p.clone(),
                (None, Some(profile)) => profile.path.to_string(),
                (None, None) => "/metrics".to_string(),
            };
            if !path.starts_with('/') || path.parse::<http::Uri>().is_err() {
                return Err(bad(format!("{field}.path"), "not a valid request path"));
            }
            let headers = scrape_headers(&c.headers, field, env)?;
            let mut spec = match profile {
                Some(p) => from_profile(p, host, port, path, headers),
                None => MetricsSpec {
                    profile: None,
                    host,
                    port,
                    path,
                    work: Vec::new(),
                    busy: Vec::new(),
                    pending: Vec::new(),
                    headers,
                    keep_alive: true,
                    engine_answers: false,
                    engine_label: None,
                    sleep: None,
                },
            };
            if let Some(label) = &c.engine_label {
                if !expo::is_label_name(label) {
                    return Err(bad(format!("{field}.engineLabel"), "must be a label name"));
                }
                spec.engine_label = Some(label.clone());
            }
            // Series given here replace the profile's.
            for (list, key, target) in [
                (&c.work, "work", &mut spec.work),
                (&c.busy, "busy", &mut spec.busy),
                (&c.pending, "pending", &mut spec.pending),
            ] {
                if !list.is_empty() {
                    *target = metric_names(list, &format!("{field}.{key}"))?;
                }
            }
            if spec.work.is_empty() {
                return Err(bad(format!("{field}.work"), "needs at least one counter"));
            }
            if spec.busy.is_empty() && spec.pending.is_empty() {
                return Err(bad(field, "needs at least one busy or pending gauge"));
            }
            Ok(spec)
        }
    }
}

fn from_profile(
    p: &Profile,
    host: Option<String>,
    port: u16,
    path: String,
    headers: Vec<ScrapeHeader>,
) -> MetricsSpec {
    let owned = |names: &[&str]| names.iter().map(|s| s.to_string()).collect();
    MetricsSpec {
        profile: Some(p.name),
        host,
        port,
        path,
        work: owned(p.work),
        busy: owned(p.busy),
        pending: owned(p.pending),
        headers,
        keep_alive: p.keep_alive,
        engine_answers: p.engine_answers,
        engine_label: p.engine_label.map(str::to_owned),
        sleep: p.sleep.map(|signal| SleepSpec {
            signal,
            idle_after: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Vec<UpstreamSpec> {
        parse(text, &[], |_| None).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> String {
        match parse(text, &[WorkerName::parse("model").expect("valid")], |_| {
            None
        }) {
            Ok(v) => panic!("{text} accepted: {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_idle_sleep_is_read_from_the_recorded_command_line() {
        let idle = |metrics: &str, args: &str| {
            let text = format!(
                r#"{{"x": {{"livenessProbe": {{"httpGet": {{"port": 8000}}}}, "metrics": {metrics},
                          "process": {{"cmdline": ["server"{args}]}}}}}}"#
            );
            ok(&text)[0]
                .metrics
                .as_ref()
                .and_then(|m| m.sleep.as_ref())
                .map(|s| s.idle_after)
        };
        let secs = |s: u64| Some(Some(Duration::from_secs(s)));
        let cases = [
            (r#""vllm""#, "", Some(None)),
            (r#""vllm""#, r#", "--sleep-idle-ttl", "300""#, secs(300)),
            (r#""vllm""#, r#", "--sleep-idle-ttl=300""#, secs(300)),
            (r#""vllm""#, r#", "--sleep-idle-ttl", "$(TTL)""#, secs(0)),
            (
                r#""llamacpp""#,
                r#", "--sleep-idle-seconds", "60""#,
                secs(60),
            ),
            (
                r#""llamacpp""#,
                r#", "--sleep-idle-seconds", "-1""#,
                Some(None),
            ),
            (r#""llamacpp""#, r#", "--sleep-idle-seconds""#, Some(None)),
            (r#""tgi""#, r#", "--sleep-idle-ttl", "300""#, None),
        ];
        for (metrics, args, want) in cases {
            assert_eq!(idle(metrics, args), want, "{metrics} {args}");
        }
    }

    #[test]
    fn an_engine_label_comes_from_the_profile_or_the_object() {
        let label = |metrics: &str| {
            let text = format!(
                r#"{{"x": {{"livenessProbe": {{"httpGet": {{"port": 8000}}}}, "metrics": {metrics}}}}}"#
            );
            ok(&text)[0]
                .metrics
                .as_ref()
                .and_then(|m| m.engine_label.clone())
        };
        assert_eq!(label(r#""vllm""#).as_deref(), Some("engine"));
        assert_eq!(label(r#""sglang""#), None);
        assert_eq!(
            label(r#"{"work": ["x_steps_total"], "busy": ["x_running"], "engineLabel": "rank"}"#)
                .as_deref(),
            Some("rank")
        );
        let e = err(
            r#"{"x": {"livenessProbe": {"httpGet": {"port": 8000}}, "metrics": {"profile": "vllm", "engineLabel": "a:b"}}}"#,
        );
        assert!(
            e.contains("x.metrics.engineLabel: must be a label name"),
            "{e}"
        );
    }

    #[test]
    fn a_vllm_container_as_inject_writes_it() {
        let specs = ok(r#"{"vllm": {
            "startupProbe": {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 5, "failureThreshold": 120},
            "livenessProbe": {"httpGet": {"path": "/health", "port": 8000, "httpHeaders": [{"name": "X-A", "value": "b"}]}, "timeoutSeconds": 3},
            "readinessProbe": {"tcpSocket": {"port": 8000}},
            "metrics": "vllm"}}"#);
        let s = &specs[0];
        assert_eq!(s.name.as_str(), "vllm");
        let startup = &s.probes[&ProbeKind::Startup];
        assert_eq!(startup.period, Duration::from_secs(5));
        assert_eq!(startup.timeout, DEFAULT_TIMEOUT);
        let Action::Http(h) = &s.probes[&ProbeKind::Liveness].action else {
            panic!("liveness is http");
        };
        assert_eq!(h.headers.len(), 1);
        assert_eq!(h.headers[0].0.as_str(), "x-a");
        assert_eq!(h.headers[0].1.to_str().ok(), Some("b"));
        assert_eq!(
            s.probes[&ProbeKind::Liveness].timeout,
            Duration::from_secs(3)
        );
        assert_eq!(s.probes[&ProbeKind::Liveness].period, DEFAULT_PERIOD);
        assert_eq!(
            s.probes[&ProbeKind::Readiness].action,
            Action::Tcp {
                port: 8000,
                host: None
            }
        );
        let m = s.metrics.as_ref().expect("metrics");
        assert_eq!(
            (m.profile, m.port, m.path.as_str()),
            (Some("vllm"), 8000, "/metrics")
        );
        assert!(m.busy.contains(&"vllm:num_requests_running".to_string()));
        assert_eq!(s.probe_ports(), vec![8000]);
    }

    #[test]
    fn triton_scrapes_its_own_port_and_grpc_parses() {
        let specs = ok(
            r#"{"triton": {"livenessProbe": {"grpc": {"port": 8001}}, "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": 8000}}, "metrics": "triton"}}"#,
        );
        let s = &specs[0];
        assert_eq!(s.metrics.as_ref().map(|m| m.port), Some(8002));
        assert_eq!(
            s.probes[&ProbeKind::Liveness].action,
            Action::Grpc {
                port: 8001,
                service: String::new()
            }
        );
    }

    #[test]
    fn a_custom_metrics_object() {
        let specs = ok(
            r#"{"x": {"livenessProbe": {"httpGet": {"port": 81}}, "metrics": {"work": ["a_total"], "pending": ["q"]}}}"#,
        );
        let m = specs[0].metrics.as_ref().expect("metrics");
        assert_eq!((m.port, m.path.as_str(), m.profile), (81, "/metrics", None));
        let Action::Http(h) = &specs[0].probes[&ProbeKind::Liveness].action else {
            panic!("http");
        };
        assert_eq!(h.path, "/");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            ("{", "invalid JSON"),
            ("[]", "upstreams: invalid type: sequence, expected a map"),
            (r#"{"model": {}}"#, "model: also named by --expect"),
            (r#"{"Bad": {}}"#, "Bad: not a valid container name"),
            (
                r#"{"a": {"livenessProbe": {"exec": {"command": ["true"]}}}}"#,
                "a.livenessProbe.exec: exec probes",
            ),
            (
                r#"{"a": {"livenessProbe": {"httpGet": {"port": 1, "scheme": "HTTPS"}}}}"#,
                "a.livenessProbe.httpGet.scheme: HTTPS is not supported",
            ),
            (
                r#"{"a": {"readinessProbe": {"httpGet": {"port": "http"}}}}"#,
                "a.readinessProbe.httpGet.port: named port \"http\"",
            ),
            (
                r#"{"a": {"readinessProbe": {"httpGet": {"port": 70000}}}}"#,
                "a.readinessProbe.httpGet.port: must be a port",
            ),
            (
                r#"{"a": {"readinessProbe": {}}}"#,
                "a.readinessProbe: no handler",
            ),
            (
                r#"{"a": {"readinessProbe": {"tcpSocket": {"port": 1}, "grpc": {"port": 1}}}}"#,
                "several handlers",
            ),
            (
                r#"{"a": {"startupProbe": {"tcpSocket": {"port": 1}, "periodSeconds": 0}}}"#,
                "a.startupProbe.periodSeconds",
            ),
            (
                r#"{"a": {"startupProbe": {"tcpSocket": {"port": 1}, "timeoutSeconds": "1"}}}"#,
                "a.startupProbe.timeoutSeconds",
            ),
            (
                r#"{"a": {"livenessprobe": {}}}"#,
                "upstreams.a.livenessprobe: unknown field `livenessprobe`, expected one of",
            ),
            (
                r#"{"a": {"metrics": "ollama"}}"#,
                "a.metrics: unknown profile \"ollama\"",
            ),
            (
                r#"{"a": {"metrics": "vllm"}}"#,
                "a.metrics: profile vllm needs an httpGet probe",
            ),
            (
                r#"{"a": {"metrics": {"port": 1, "work": []}}}"#,
                "a.metrics.work: needs at least one",
            ),
            (
                r#"{"a": {"metrics": {"port": 1, "work": ["x y"]}}}"#,
                "a.metrics.work[0]: must be a list of metric names",
            ),
            (
                r#"{"a": {"metrics": {"port": 1, "work": ["w"]}}}"#,
                "needs at least one busy or pending",
            ),
            (
                r#"{"a": {"livenessProbe": {"httpGet": {"port": 1, "httpHeaders": [{"name": "bad name", "value": ""}]}}}}"#,
                "a.livenessProbe.httpGet.httpHeaders[0]",
            ),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(got.contains(want), "{text}\n got: {got}\nwant: {want}");
        }
    }

    #[test]
    fn shape_errors_name_the_whole_field_path() {
        let cases = [
            (
                r#"{"vllm": {"livenessProbe": {"httpGet": {"port": true}}}}"#,
                "upstreams.vllm.livenessProbe.httpGet.port: invalid type: boolean `true`, expected a port number",
            ),
            (
                r#"{"vllm": {"livenessProbe": {"httpGet": {"port": 8000, "paht": "/"}}}}"#,
                "upstreams.vllm.livenessProbe.httpGet.paht: unknown field `paht`",
            ),
            (
                r#"{"a": {"metrics": {"port": 1, "work": ["w"], "busy": ["b"], "scrape": 1}}}"#,
                "upstreams.a.metrics.scrape: unknown field `scrape`",
            ),
            (
                r#"{"a": {"metrics": {"work": ["w"], "busy": [1]}}}"#,
                "upstreams.a.metrics.busy[0]: invalid type: integer `1`, expected a string",
            ),
            (
                r#"{"a": {"process": {"cmdline": "vllm serve"}}}"#,
                "upstreams.a.process.cmdline: invalid type: string",
            ),
            (
                r#"{"a": {"process": {"cmdline": []}}}"#,
                "upstreams.a.process.cmdline: must name at least the program",
            ),
            (r#"{"a": {}} x"#, "upstreams: invalid JSON: trailing characters"),
        ];
        for (text, want) in cases {
            let got = err(text);
            assert!(got.starts_with(want), "{text}\n got: {got}\nwant: {want}");
        }
    }

    #[test]
    fn a_process_alone_is_an_upstream_judged_by_proc() {
        let specs = ok(r#"{"ray-worker": {"process": {"cmdline": ["ray", "start", "--block"]}}}"#);
        assert!(specs[0].probes.is_empty() && specs[0].metrics.is_none());
        assert_eq!(
            specs[0].process,
            Some(ProcessSpec {
                cmdline: vec!["ray".into(), "start".into(), "--block".into()]
            })
        );
    }

    #[test]
    fn metrics_headers_come_from_the_environment_and_are_never_printed() {
        let text = r#"{"llama": {"livenessProbe": {"httpGet": {"path": "/health", "port": 8080}},
            "metrics": {"profile": "vllm", "headers": [{"name": "Authorization", "valueFromEnv": "LLAMA_KEY", "prefix": "Bearer "}]}}}"#;
        let env = |name: &str| (name == "LLAMA_KEY").then(|| "s3cret".to_string());
        let specs = parse(text, &[], env).expect("valid");
        let m = specs[0].metrics.as_ref().expect("metrics");
        assert_eq!((m.profile, m.port), (Some("vllm"), 8080));
        assert_eq!(m.headers[0].name.as_str(), "authorization");
        assert_eq!(m.headers[0].value.to_str().ok(), Some("Bearer s3cret"));
        assert!(m.headers[0].value.is_sensitive());
        let shown = format!("{specs:?}");
        assert!(!shown.contains("s3cret"), "{shown}");

        let unset = parse(text, &[], |_| None).expect_err("unset variable");
        assert_eq!(
            unset.to_string(),
            "upstreams.llama.metrics.headers[0].valueFromEnv: the agent's environment has no variable LLAMA_KEY"
        );
        let bad_value = parse(text, &[], |_| Some("a\nb".into())).expect_err("newline");
        assert!(!bad_value.to_string().contains("a\nb"), "{bad_value}");
    }

    #[test]
    fn a_llamacpp_profile_scrapes_on_the_probes_host_without_keep_alive() {
        let text = r#"{"llama": {"livenessProbe": {"httpGet": {"path": "/health", "port": 8080, "host": "127.0.0.1"}},
            "metrics": {"profile": "llamacpp", "headers": [{"name": "Authorization", "valueFromEnv": "KEY", "prefix": "Bearer "}]}}}"#;
        let env = |n: &str| (n == "KEY").then(|| "s3cret".to_owned());
        let specs = parse(text, &[], env).expect("valid");
        let m = specs[0].metrics.as_ref().expect("metrics");
        assert_eq!(
            (
                m.profile,
                m.host.as_deref(),
                m.port,
                m.keep_alive,
                m.engine_answers
            ),
            (Some("llamacpp"), Some("127.0.0.1"), 8080, false, true)
        );
        let shown = format!("{specs:?}");
        assert!(!shown.contains("s3cret") && shown.contains("authorization: <redacted>"));
    }
}
