//! The upstreams' configuration schema (SPEC §8): the JSON that `vitals-agent inject` writes
//! into the agent's `VITALS_UPSTREAMS` and `vitals-agent run` reads from `--upstreams`.
//!
//! One set of serde types for both sides, so the writer cannot produce what the reader
//! refuses. Every object refuses unknown fields (a misspelt `livenessprobe` is an error, not
//! a probe silently not run). The types say what JSON is well-formed; what it must mean
//! (named ports resolved, no `exec` or `https`, exactly one handler per probe, a metrics
//! header's variable set) is checked by the reader, [`super`], which turns
//! this into the types the probers run.
//!
//! ```json
//! {"vllm": {
//!   "startupProbe":   {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 10},
//!   "livenessProbe":  {"httpGet": {"path": "/health", "port": 8000}, "timeoutSeconds": 5},
//!   "readinessProbe": {"tcpSocket": {"port": 8000}},
//!   "metrics": "vllm",
//!   "process": {"cmdline": ["python3", "-m", "vllm.entrypoints.openai.api_server"]}},
//!  "llama": {
//!   "metrics": {"profile": "llamacpp",
//!               "headers": [{"name": "Authorization", "valueFromEnv": "LLAMA_KEY", "prefix": "Bearer "}]}}}
//! ```

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, value::MapAccessDeserializer};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The whole document: each upstream container's name → its entry, sorted by name (so the
/// JSON inject writes is the same for the same pod).
pub type Upstreams = BTreeMap<String, Upstream>;

/// One upstream container. Every field is optional: a probe it lacks passes, and an entry
/// with only `process` is judged by /proc alone (a headless group member, SPEC §9).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Upstream {
    /// The container's original `startupProbe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
    /// The container's original `livenessProbe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    /// The container's original `readinessProbe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    /// Where its Prometheus metrics are: a built-in profile's name or an object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// What its process looks like, for finding it in /proc without privileges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    /// The opt-in canary request (SPEC §12); absent: none is ever sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
}

/// The opt-in canary (SPEC §12): one cheap request, sent only after the server has been idle
/// for `idle`, whose whole answer must arrive within `deadline`. Every field is optional:
/// `{}` is the profile's default request, idle 60 s, deadline 10 s.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Canary {
    /// The request (absent: the metrics profile's default one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<CanaryRequest>,
    /// How long the server must have been idle (no work, no canary) before one is sent,
    /// as `60s`, `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<String>,
    /// The time limit on the whole answer, last byte included, as `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
}

/// A canary request: `POST <path>` with a JSON body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CanaryRequest {
    /// Request path.
    pub path: String,
    /// The JSON body.
    pub body: serde_json::Value,
    /// Port (default: the first httpGet probe's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
}

/// A Kubernetes core/v1 `Probe` as written in a pod spec. The kubelet's own fields
/// (`initialDelaySeconds`, thresholds, `terminationGracePeriodSeconds`) are accepted, so a
/// probe can be pasted as it is, and ignored: they stay with the kubelet's probe of the agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Probe {
    /// Refused by the reader (it runs inside the container); a field so the refusal can say
    /// so instead of "unknown field".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<serde_json::Value>,
    /// `httpGet`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGet>,
    /// `tcpSocket`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocket>,
    /// `grpc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<Grpc>,
    /// The kubelet's; ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<i64>,
    /// How often the agent runs the probe (Kubernetes' default: 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<u64>,
    /// The whole probe's time limit (Kubernetes' default: 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// The kubelet's; ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<i64>,
    /// The kubelet's; ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i64>,
    /// The kubelet's; ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
}

/// `httpGet` (core/v1 `HTTPGetAction`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpGet {
    /// Request path; `/` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The port: a number (a name must be resolved first; inject does).
    pub port: Port,
    /// Where to connect instead of the pod IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `HTTP` only (the reader refuses `HTTPS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Request headers, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<HttpHeader>,
}

/// One `httpHeaders` item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpHeader {
    /// Header name.
    pub name: String,
    /// Header value (empty when absent).
    #[serde(default)]
    pub value: String,
}

/// `tcpSocket`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpSocket {
    /// The port.
    pub port: Port,
    /// Where to connect instead of the pod IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// `grpc`: `grpc.health.v1.Health/Check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Grpc {
    /// The port.
    pub port: Port,
    /// `service` in the request (absent: the server as a whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// A port as Kubernetes writes it (`IntOrString`): the reader accepts only numbers from 1 to
/// 65535 and names the field otherwise; a name is kept so that refusal can quote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Port {
    /// A number, range not yet checked.
    Number(i64),
    /// A named port (`http`), unresolved.
    Name(String),
}

impl From<u16> for Port {
    fn from(port: u16) -> Self {
        Self::Number(i64::from(port))
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Number(n) => s.serialize_i64(*n),
            Self::Name(name) => s.serialize_str(name),
        }
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl de::Visitor<'_> for PortVisitor {
            type Value = Port;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number")
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Port, E> {
                Ok(Port::Number(n))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Port, E> {
                i64::try_from(n)
                    .map(Port::Number)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(n), &self))
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Port, E> {
                Ok(Port::Name(name.to_string()))
            }
        }
        d.deserialize_any(PortVisitor)
    }
}

/// An upstream's metrics source (SPEC §8 `M`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Metrics {
    /// A built-in profile's name (`"vllm"`), scraped on the first httpGet probe's port or
    /// the server's own metrics port.
    Profile(String),
    /// A custom source, or a profile with settings (headers).
    Custom(CustomMetrics),
}

// By hand rather than `untagged`: an untagged enum reports only "did not match any variant",
// losing the field path of the error inside the object.
impl<'de> Deserialize<'de> for Metrics {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MetricsVisitor;
        impl<'de> de::Visitor<'de> for MetricsVisitor {
            type Value = Metrics;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a profile name or an object")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Metrics, E> {
                Ok(Metrics::Profile(name.to_string()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Metrics, A::Error> {
                CustomMetrics::deserialize(MapAccessDeserializer::new(map)).map(Metrics::Custom)
            }
        }
        d.deserialize_any(MetricsVisitor)
    }
}

/// A metrics object. With `profile`, the profile gives the port, path and series this
/// object leaves out; without, `work` and one of `busy`/`pending` are required.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CustomMetrics {
    /// The built-in profile this object starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Port of the metrics endpoint (default: the profile's, else the first httpGet
    /// probe's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// Path of the metrics endpoint (default: `/metrics`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Counters that move while the engine works.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub work: Vec<String>,
    /// Gauges of requests being worked on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub busy: Vec<String>,
    /// Gauges of requests waiting.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<String>,
    /// Headers sent with every scrape (credentials), values from the agent's environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<MetricsHeader>,
    /// The label naming each engine of a data-parallel server (default: the profile's):
    /// each engine is judged on its own series.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_label: Option<String>,
}

/// A scrape header whose value the agent reads from its environment at start (so a secret
/// stays in a Secret-backed env var, never in this JSON); never logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsHeader {
    /// Header name (`Authorization`).
    pub name: String,
    /// The agent's environment variable holding the value; unset is a start-up error.
    pub value_from_env: String,
    /// Put before the variable's value (`Bearer `).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// How to recognise the upstream's process in /proc by what any user may read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Process {
    /// The container's `command` followed by its `args`, as the pod spec writes them: only
    /// `args` when the image's entrypoint runs (so compare it with the end of
    /// `/proc/<pid>/cmdline`), and `$(VAR)` references unexpanded (the kubelet expands them
    /// from the container's env, so they stand for any text).
    pub cmdline: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_inject_writes_reads_back_the_same() {
        let mut doc = Upstreams::new();
        doc.insert(
            "vllm".into(),
            Upstream {
                liveness_probe: Some(Probe {
                    http_get: Some(HttpGet {
                        path: Some("/health".into()),
                        port: Port::from(8000),
                        host: None,
                        scheme: None,
                        http_headers: Vec::new(),
                    }),
                    period_seconds: Some(10),
                    ..Probe::default()
                }),
                metrics: Some(Metrics::Profile("vllm".into())),
                process: Some(Process {
                    cmdline: vec!["vllm".into(), "serve".into()],
                }),
                ..Upstream::default()
            },
        );
        let text = serde_json::to_string(&doc).expect("serialises");
        assert_eq!(
            text,
            r#"{"vllm":{"livenessProbe":{"httpGet":{"path":"/health","port":8000},"periodSeconds":10},"metrics":"vllm","process":{"cmdline":["vllm","serve"]}}}"#
        );
        let back: Upstreams = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, doc);
    }

    #[test]
    fn both_forms_of_metrics_and_both_forms_of_port() {
        let m: Metrics = serde_json::from_str(r#""sglang""#).expect("profile");
        assert_eq!(m, Metrics::Profile("sglang".into()));
        let m: Metrics = serde_json::from_str(
            r#"{"profile": "llamacpp", "port": "http", "headers": [{"name": "Authorization", "valueFromEnv": "K", "prefix": "Bearer "}]}"#,
        )
        .expect("object");
        let Metrics::Custom(c) = m else {
            panic!("an object is a custom source")
        };
        assert_eq!(c.port, Some(Port::Name("http".into())));
        assert_eq!(c.headers[0].prefix.as_deref(), Some("Bearer "));
    }
}
