//! The `--upstreams` / `VITALS_UPSTREAMS` JSON (SPEC §8): each upstream container's original
//! Kubernetes probes and its metrics source, validated into typed specs once, at start.
//!
//! The JSON is walked by hand rather than derived with serde so that every error names the
//! exact field (`vllm.livenessProbe.httpGet.port: ...`): a bad field is found by a person
//! reading `kubectl logs`, and "invalid type at line 1 column 212" helps nobody there.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};
use vitals_proto::WorkerName;

use super::profiles::{self, Profile};

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
    /// `httpHeaders`, in order (a `Host` header overrides the Host line).
    pub headers: Vec<(String, String)>,
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
    /// Headers sent with every scrape (credentials), values read from the environment.
    pub headers: Vec<ScrapeHeader>,
    /// Whether a scrape may reuse the previous scrape's connection (see [`Profile`]).
    pub keep_alive: bool,
    /// Whether the server's engine loop itself answers the metrics endpoint, so that
    /// scrapes timing out while the probes pass are a hung engine (SPEC §8, llama.cpp).
    pub engine_answers: bool,
}

/// A header sent with every scrape. Its `Debug` hides the value: it is a secret and must
/// never reach a log line or `/status`.
#[derive(Clone, PartialEq, Eq)]
pub struct ScrapeHeader {
    /// Header name.
    pub name: hyper::header::HeaderName,
    /// Header value (the prefix, then the variable's value), marked sensitive.
    pub value: hyper::header::HeaderValue,
}

impl std::fmt::Debug for ScrapeHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: <redacted>", self.name)
    }
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
    /// Not JSON.
    #[error("upstreams: invalid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// A field is wrong.
    #[error("upstreams: {field}: {problem}")]
    Field {
        /// Where, as `container.probe.key`.
        field: String,
        /// What is wrong.
        problem: String,
    },
}

fn bad(field: impl Into<String>, problem: impl Into<String>) -> UpstreamsError {
    UpstreamsError::Field {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Parses and validates the JSON text; `expect` are the protocol workers (`--expect`),
/// whose names an upstream may not take. Metrics header values come from the process's
/// environment.
pub fn parse(text: &str, expect: &[WorkerName]) -> Result<Vec<UpstreamSpec>, UpstreamsError> {
    parse_with_env(text, expect, |name| std::env::var(name).ok())
}

/// [`parse`], with the environment given as a lookup (for tests).
pub fn parse_with_env(
    text: &str,
    expect: &[WorkerName],
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<UpstreamSpec>, UpstreamsError> {
    let root: Value = serde_json::from_str(text).map_err(UpstreamsError::Json)?;
    let Value::Object(root) = root else {
        return Err(bad("(top level)", "must be an object of container names"));
    };
    let mut out = Vec::with_capacity(root.len());
    for (name, value) in &root {
        let worker = WorkerName::parse(name.as_str())
            .map_err(|e| bad(name.as_str(), format!("not a valid container name: {e}")))?;
        if expect.contains(&worker) {
            return Err(bad(
                name.as_str(),
                "also named by --expect: a container is either a protocol worker or an upstream",
            ));
        }
        let obj = object(value, name)?;
        let mut probes = BTreeMap::new();
        for kind in ProbeKind::ALL {
            if let Some(p) = obj.get(kind.key()) {
                if !p.is_null() {
                    let field = format!("{name}.{}", kind.key());
                    probes.insert(kind, probe(p, &field)?);
                }
            }
        }
        let metrics = match obj.get("metrics") {
            None | Some(Value::Null) => None,
            Some(m) => Some(metrics(m, &format!("{name}.metrics"), &probes, &env)?),
        };
        for key in obj.keys() {
            let known = ProbeKind::ALL.iter().any(|k| k.key() == key) || key == "metrics";
            if !known {
                return Err(bad(
                    format!("{name}.{key}"),
                    "unknown key (expected startupProbe, livenessProbe, readinessProbe, metrics)",
                ));
            }
        }
        out.push(UpstreamSpec {
            name: worker,
            probes,
            metrics,
        });
    }
    Ok(out)
}

fn object<'a>(v: &'a Value, field: &str) -> Result<&'a Map<String, Value>, UpstreamsError> {
    v.as_object().ok_or_else(|| bad(field, "must be an object"))
}

fn seconds(
    obj: &Map<String, Value>,
    key: &str,
    field: &str,
    default: Duration,
) -> Result<Duration, UpstreamsError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => match v.as_u64() {
            Some(n) if (1..=86_400).contains(&n) => Ok(Duration::from_secs(n)),
            _ => Err(bad(
                format!("{field}.{key}"),
                "must be a whole number of seconds from 1 to 86400",
            )),
        },
    }
}

fn port(obj: &Map<String, Value>, field: &str) -> Result<u16, UpstreamsError> {
    let field = format!("{field}.port");
    match obj.get("port") {
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| bad(field, "must be a port number from 1 to 65535")),
        Some(Value::String(s)) => Err(bad(
            field,
            format!(
                "named port {s:?} must be resolved to its number (vitals-agent inject does this)"
            ),
        )),
        _ => Err(bad(field, "missing or not a port number")),
    }
}

fn opt_string(
    obj: &Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<String>, UpstreamsError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(format!("{field}.{key}"), "must be a string")),
    }
}

fn probe(v: &Value, field: &str) -> Result<ProbeSpec, UpstreamsError> {
    let obj = object(v, field)?;
    if obj.contains_key("exec") {
        return Err(bad(
            format!("{field}.exec"),
            "exec probes run inside the container; leave them on the container (inject does)",
        ));
    }
    let handlers: Vec<&str> = ["httpGet", "tcpSocket", "grpc"]
        .into_iter()
        .filter(|k| obj.get(*k).is_some_and(|v| !v.is_null()))
        .collect();
    let action = match handlers.as_slice() {
        ["httpGet"] => {
            let f = format!("{field}.httpGet");
            let h = object(&obj["httpGet"], &f)?;
            if let Some(scheme) = opt_string(h, "scheme", &f)? {
                if !scheme.eq_ignore_ascii_case("http") {
                    return Err(bad(
                        format!("{f}.scheme"),
                        format!("{scheme} is not supported: the agent speaks no TLS; leave https probes on the container"),
                    ));
                }
            }
            let path = opt_string(h, "path", &f)?.unwrap_or_else(|| "/".to_string());
            let path = if path.starts_with('/') {
                path
            } else {
                format!("/{path}")
            };
            if path.parse::<hyper::Uri>().is_err() {
                return Err(bad(format!("{f}.path"), "not a valid request path"));
            }
            let mut headers = Vec::new();
            match h.get("httpHeaders") {
                None | Some(Value::Null) => {}
                Some(Value::Array(list)) => {
                    for (i, item) in list.iter().enumerate() {
                        let hf = format!("{f}.httpHeaders[{i}]");
                        let item = object(item, &hf)?;
                        let name = opt_string(item, "name", &hf)?
                            .ok_or_else(|| bad(format!("{hf}.name"), "missing"))?;
                        let value = opt_string(item, "value", &hf)?.unwrap_or_default();
                        if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                            || hyper::header::HeaderValue::from_str(&value).is_err()
                        {
                            return Err(bad(hf, "not a valid HTTP header"));
                        }
                        headers.push((name, value));
                    }
                }
                Some(_) => return Err(bad(format!("{f}.httpHeaders"), "must be a list")),
            }
            Action::Http(HttpGet {
                path,
                port: port(h, &f)?,
                host: opt_string(h, "host", &f)?.filter(|s| !s.is_empty()),
                headers,
            })
        }
        ["tcpSocket"] => {
            let f = format!("{field}.tcpSocket");
            let t = object(&obj["tcpSocket"], &f)?;
            Action::Tcp {
                port: port(t, &f)?,
                host: opt_string(t, "host", &f)?.filter(|s| !s.is_empty()),
            }
        }
        ["grpc"] => {
            let f = format!("{field}.grpc");
            let g = object(&obj["grpc"], &f)?;
            Action::Grpc {
                port: port(g, &f)?,
                service: opt_string(g, "service", &f)?.unwrap_or_default(),
            }
        }
        [] => {
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
        period: seconds(obj, "periodSeconds", field, DEFAULT_PERIOD)?,
        timeout: seconds(obj, "timeoutSeconds", field, DEFAULT_TIMEOUT)?,
    })
}

fn names(obj: &Map<String, Value>, key: &str, field: &str) -> Result<Vec<String>, UpstreamsError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| match v.as_str() {
                Some(s) if super::expo::is_metric_name(s) => Ok(s.to_string()),
                _ => Err(bad(
                    format!("{field}.{key}"),
                    "must be a list of metric names",
                )),
            })
            .collect(),
        Some(_) => Err(bad(
            format!("{field}.{key}"),
            "must be a list of metric names",
        )),
    }
}

/// `headers` of a metrics object: `[{"name", "valueFromEnv", "prefix"}]`, each value read
/// from the environment now (a missing variable is a start-up error, not a silent 401).
fn scrape_headers(
    obj: &Map<String, Value>,
    field: &str,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Vec<ScrapeHeader>, UpstreamsError> {
    let list = match obj.get("headers") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(bad(format!("{field}.headers"), "must be a list")),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let hf = format!("{field}.headers[{i}]");
        let item = object(item, &hf)?;
        for key in item.keys() {
            if !["name", "valueFromEnv", "prefix"].contains(&key.as_str()) {
                return Err(bad(format!("{hf}.{key}"), "unknown key"));
            }
        }
        let name =
            opt_string(item, "name", &hf)?.ok_or_else(|| bad(format!("{hf}.name"), "missing"))?;
        let name = hyper::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| bad(format!("{hf}.name"), "not a valid HTTP header name"))?;
        let var = opt_string(item, "valueFromEnv", &hf)?
            .ok_or_else(|| bad(format!("{hf}.valueFromEnv"), "missing"))?;
        let secret = env(&var).ok_or_else(|| {
            bad(
                format!("{hf}.valueFromEnv"),
                format!("environment variable {var} is not set"),
            )
        })?;
        let prefix = opt_string(item, "prefix", &hf)?.unwrap_or_default();
        // The value itself is never part of an error: it is a secret.
        let mut value = hyper::header::HeaderValue::from_str(&format!("{prefix}{secret}"))
            .map_err(|_| {
                bad(
                    format!("{hf}.valueFromEnv"),
                    format!("{var} is not a valid header value"),
                )
            })?;
        value.set_sensitive(true);
        out.push(ScrapeHeader { name, value });
    }
    Ok(out)
}

fn metrics(
    v: &Value,
    field: &str,
    probes: &BTreeMap<ProbeKind, ProbeSpec>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<MetricsSpec, UpstreamsError> {
    // The first httpGet probe is where a profile scrapes (its host, and its port unless
    // the server has its own metrics port).
    let http_probe = ProbeKind::ALL.iter().find_map(|k| match probes.get(k) {
        Some(ProbeSpec {
            action: Action::Http(h),
            ..
        }) => Some(h),
        _ => None,
    });
    let http_port = http_probe.map(|h| h.port);
    let host = http_probe.and_then(|h| h.host.clone());
    let profile = |name: &str, field: &str| -> Result<&'static Profile, UpstreamsError> {
        profiles::builtin(name).ok_or_else(|| {
            bad(
                field,
                format!(
                    "unknown profile {name:?} (built in: {})",
                    profiles::names().join(", ")
                ),
            )
        })
    };
    let from_profile = |p: &'static Profile, port: u16, headers| MetricsSpec {
        profile: Some(p.name),
        host: host.clone(),
        port,
        path: p.path.to_string(),
        work: p.work.iter().map(|s| s.to_string()).collect(),
        busy: p.busy.iter().map(|s| s.to_string()).collect(),
        pending: p.pending.iter().map(|s| s.to_string()).collect(),
        headers,
        keep_alive: p.keep_alive,
        engine_answers: p.engine_answers,
    };
    let needs_port = |p: &Profile, field: &str| {
        p.port.or(http_port).ok_or_else(|| {
            bad(
                field,
                format!(
                    "profile {} needs an httpGet probe to take the port from",
                    p.name
                ),
            )
        })
    };
    match v {
        Value::String(name) => {
            let p = profile(name, field)?;
            Ok(from_profile(p, needs_port(p, field)?, Vec::new()))
        }
        Value::Object(obj) => {
            for key in obj.keys() {
                if ![
                    "profile", "port", "path", "work", "busy", "pending", "headers",
                ]
                .contains(&key.as_str())
                {
                    return Err(bad(format!("{field}.{key}"), "unknown key"));
                }
            }
            let headers = scrape_headers(obj, field, env)?;
            let base = match opt_string(obj, "profile", field)? {
                Some(name) => Some(profile(&name, &format!("{field}.profile"))?),
                None => None,
            };
            let port = match (obj.get("port"), base) {
                (None | Some(Value::Null), Some(p)) => needs_port(p, field)?,
                (None | Some(Value::Null), None) => http_port.ok_or_else(|| {
                    bad(
                        format!("{field}.port"),
                        "missing, and no httpGet probe to take it from",
                    )
                })?,
                (Some(_), _) => port(obj, field)?,
            };
            let mut spec = match base {
                Some(p) => from_profile(p, port, headers),
                None => MetricsSpec {
                    profile: None,
                    host: host.clone(),
                    port,
                    path: "/metrics".to_string(),
                    work: Vec::new(),
                    busy: Vec::new(),
                    pending: Vec::new(),
                    headers,
                    keep_alive: true,
                    engine_answers: false,
                },
            };
            if let Some(path) = opt_string(obj, "path", field)? {
                if !path.starts_with('/') || path.parse::<hyper::Uri>().is_err() {
                    return Err(bad(format!("{field}.path"), "not a valid request path"));
                }
                spec.path = path;
            }
            for (key, list) in [
                ("work", &mut spec.work),
                ("busy", &mut spec.busy),
                ("pending", &mut spec.pending),
            ] {
                if obj.get(key).is_some_and(|v| !v.is_null()) {
                    *list = names(obj, key, field)?;
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
        _ => Err(bad(field, "must be a profile name or an object")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Vec<UpstreamSpec> {
        parse(text, &[]).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> String {
        match parse(text, &[WorkerName::parse("model").expect("valid")]) {
            Ok(v) => panic!("{text} accepted: {v:?}"),
            Err(e) => e.to_string(),
        }
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
        assert_eq!(h.headers, vec![("X-A".to_string(), "b".to_string())]);
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
            ("[]", "(top level)"),
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
                "a.livenessprobe: unknown key",
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
                "a.metrics.work: must be a list of metric names",
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
    fn metrics_headers_come_from_the_environment_and_never_show() {
        let text = r#"{"llama": {"livenessProbe": {"httpGet": {"path": "/health", "port": 8080, "host": "127.0.0.1"}},
            "metrics": {"profile": "llamacpp", "headers": [{"name": "Authorization", "valueFromEnv": "KEY", "prefix": "Bearer "}]}}}"#;
        let env = |n: &str| (n == "KEY").then(|| "s3cret".to_owned());
        let specs = parse_with_env(text, &[], env).expect("valid");
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
        assert_eq!(m.headers[0].value.to_str().ok(), Some("Bearer s3cret"));
        assert!(m.headers[0].value.is_sensitive());
        let shown = format!("{specs:?}");
        assert!(!shown.contains("s3cret") && shown.contains("authorization: <redacted>"));
        let missing = parse_with_env(text, &[], |_| None).expect_err("unset variable");
        let missing = missing.to_string();
        assert!(
            missing.contains(
                "llama.metrics.headers[0].valueFromEnv: environment variable KEY is not set"
            ),
            "{missing}"
        );
        let bad = parse_with_env(
            r#"{"x": {"livenessProbe": {"httpGet": {"port": 1}}, "metrics": {"profile": "vllm", "headers": [{"name": "A", "value": "b"}]}}}"#,
            &[],
            |_| None,
        )
        .expect_err("value is not a key");
        assert!(
            bad.to_string()
                .contains("x.metrics.headers[0].value: unknown key"),
            "{bad}"
        );
    }
}
