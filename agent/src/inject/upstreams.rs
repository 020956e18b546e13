//! Upstream containers (SPEC §8): containers that don't speak the protocol but have
//! probes. Their `httpGet`/`tcpSocket`/`grpc` probes move into the agent's
//! `VITALS_UPSTREAMS` (named ports resolved, period and timeout kept) and are replaced by
//! `httpGet` probes on the agent's port, keeping the period and thresholds the kubelet
//! applies, with `timeoutSeconds: 1`: the agent answers from memory. `exec` and `https`
//! probes stay on the container untouched. A metrics profile is picked from the image or
//! the `vitals.dev/profile.<container>` annotation.
//!
//! Re-injection finds the container's probes already pointing at the agent and takes
//! their original form from the agent's existing `VITALS_UPSTREAMS`, so the rewrite is
//! idempotent and updates in place.

use std::collections::BTreeMap;

use serde_json::{Map as JsonMap, Value};

use super::yaml::{Map, Node};
use super::{container_name, point_at_agent, Problem, AGENT_PORT};
use crate::sources::upstream::profiles;

/// The agent's env var holding the upstreams' JSON.
pub const UPSTREAMS_ENV: &str = "VITALS_UPSTREAMS";
/// Pod annotation prefix choosing a container's metrics profile (`none` for no metrics).
pub const PROFILE_ANNOTATION_PREFIX: &str = "vitals.dev/profile.";

/// The probes the agent takes over, with the path each becomes on the agent.
const PROBES: [(&str, &str); 3] = [
    ("startupProbe", "startupz"),
    ("livenessProbe", "livez"),
    ("readinessProbe", "readyz"),
];

/// `container → profile` from the pod template's `vitals.dev/profile.<c>` annotations.
pub(super) fn profile_annotations(tmpl: &Map) -> BTreeMap<String, String> {
    tmpl.get("metadata")
        .and_then(Node::as_map)
        .and_then(|m| m.get("annotations"))
        .and_then(Node::as_map)
        .map(|a| {
            a.0.iter()
                .filter_map(|(k, v)| {
                    let c = k.value.strip_prefix(PROFILE_ANNOTATION_PREFIX)?;
                    Some((c.to_string(), v.as_str()?.trim().to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The upstreams JSON an earlier injection gave the agent (empty when none or unreadable).
pub(super) fn previous_config(agent: &Map) -> JsonMap<String, Value> {
    agent
        .get("env")
        .and_then(Node::as_seq)
        .into_iter()
        .flatten()
        .filter_map(Node::as_map)
        .find(|e| e.get_str("name") == Some(UPSTREAMS_ENV))
        .and_then(|e| e.get_str("value"))
        .and_then(|v| serde_json::from_str::<Value>(v).ok())
        .and_then(|v| match v {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .unwrap_or_default()
}

/// `POD_IP` from the downward API, where the agent probes the upstreams.
pub(super) fn ensure_pod_ip(env: &mut Vec<Node>) {
    let wanted = Node::Map(Map::from_pairs([
        ("name", Node::string("POD_IP")),
        (
            "valueFrom",
            Node::Map(Map::from_pairs([(
                "fieldRef",
                Node::Map(Map::from_pairs([(
                    "fieldPath",
                    Node::string("status.podIP"),
                )])),
            )])),
        ),
    ]));
    match env.iter_mut().find(|e| container_name(e) == Some("POD_IP")) {
        Some(e) => {
            if !super::yaml::equiv(e, &wanted) {
                *e = wanted;
            }
        }
        None => env.push(wanted),
    }
}

/// Takes over one container's probes; returns its upstream entry and metrics profile, or
/// `None` when it has no probe the agent can run (it is then left alone).
pub(super) fn wire_upstream(
    c: &mut Map,
    name: &str,
    previous: Option<&Value>,
    profile_override: Option<&str>,
    warnings: &mut Vec<String>,
) -> Result<Option<(Value, Option<&'static str>)>, Problem> {
    let ports = named_ports(c);
    let mut entry = JsonMap::new();
    for (key, agent_path) in PROBES {
        let Some(probe) = c.get_mut(key).and_then(Node::as_map_mut) else {
            continue;
        };
        let path = format!("/{agent_path}/{name}");
        if points_at_agent(probe, &path) {
            if let Some(p) = previous.and_then(|p| p.get(key)) {
                entry.insert(key.to_string(), p.clone());
            }
            continue;
        }
        let Some(original) = original_probe(probe, &ports, name, key)? else {
            continue;
        };
        entry.insert(key.to_string(), Value::Object(original));
        point_at_agent(probe, &path);
        probe.set("timeoutSeconds", Node::plain("1"));
    }
    if entry.is_empty() {
        return Ok(None);
    }
    let profile = match profile_override {
        Some("none") => None,
        Some(p) => Some(
            profiles::builtin(p)
                .ok_or_else(|| Problem::UnknownProfile {
                    container: name.to_string(),
                    profile: p.to_string(),
                    known: profiles::names().join(", "),
                })?
                .name,
        ),
        None => c.get_str("image").and_then(profiles::for_image),
    };
    let has_http = entry.values().any(|p| p.get("httpGet").is_some());
    let profile = profile.filter(|p| {
        let ok = has_http || profiles::builtin(p).is_some_and(|p| p.port.is_some());
        if !ok {
            warnings.push(format!(
                "warning: container {name}: no httpGet probe to find its /metrics port, so no {p} metrics (hung-engine detection off)"
            ));
        }
        ok
    });
    match (profile, profile_override) {
        (Some(p), _) => {
            entry.insert("metrics".into(), Value::String(p.into()));
        }
        // A custom metrics object someone put in the agent's config stays, unless the
        // annotation says otherwise.
        (None, None) => {
            if let Some(custom) = previous
                .and_then(|p| p.get("metrics"))
                .filter(|m| m.is_object())
            {
                entry.insert("metrics".into(), custom.clone());
            }
        }
        (None, Some(_)) => {}
    }
    Ok(Some((Value::Object(entry), profile)))
}

fn points_at_agent(probe: &Map, path: &str) -> bool {
    probe
        .get("httpGet")
        .and_then(Node::as_map)
        .is_some_and(|h| {
            h.get_str("path") == Some(path) && h.get_str("port") == Some(&AGENT_PORT.to_string())
        })
}

/// The container's named ports.
fn named_ports(c: &Map) -> Vec<(String, u64)> {
    c.get("ports")
        .and_then(Node::as_seq)
        .into_iter()
        .flatten()
        .filter_map(Node::as_map)
        .filter_map(|p| {
            Some((
                p.get_str("name")?.to_string(),
                p.get_str("containerPort")?.parse().ok()?,
            ))
        })
        .collect()
}

/// The probe as the agent's JSON wants it, or `None` for what stays on the container (exec,
/// https, no handler).
fn original_probe(
    probe: &Map,
    ports: &[(String, u64)],
    container: &str,
    key: &'static str,
) -> Result<Option<JsonMap<String, Value>>, Problem> {
    let port = |h: &Map| -> Result<Value, Problem> {
        let raw = h.get_str("port").unwrap_or("");
        if let Ok(n) = raw.parse::<u64>() {
            return Ok(Value::from(n));
        }
        ports
            .iter()
            .find(|(n, _)| n == raw)
            .map(|(_, p)| Value::from(*p))
            .ok_or_else(|| Problem::UnknownPort {
                container: container.to_string(),
                probe: key,
                port: raw.to_string(),
            })
    };
    let mut out = JsonMap::new();
    if let Some(h) = probe.get("httpGet").and_then(Node::as_map) {
        if h.get_str("scheme")
            .is_some_and(|s| !s.eq_ignore_ascii_case("http"))
        {
            return Ok(None);
        }
        let mut get = JsonMap::new();
        for field in ["path", "host"] {
            if let Some(v) = h.get_str(field) {
                get.insert(field.into(), Value::String(v.into()));
            }
        }
        get.insert("port".into(), port(h)?);
        if let Some(headers) = h.get("httpHeaders").and_then(Node::as_seq) {
            let list = headers
                .iter()
                .filter_map(Node::as_map)
                .map(|m| {
                    let mut o = JsonMap::new();
                    for field in ["name", "value"] {
                        o.insert(
                            field.into(),
                            Value::String(m.get_str(field).unwrap_or("").into()),
                        );
                    }
                    Value::Object(o)
                })
                .collect();
            get.insert("httpHeaders".into(), Value::Array(list));
        }
        out.insert("httpGet".into(), Value::Object(get));
    } else if let Some(t) = probe.get("tcpSocket").and_then(Node::as_map) {
        let mut tcp = JsonMap::new();
        tcp.insert("port".into(), port(t)?);
        if let Some(h) = t.get_str("host") {
            tcp.insert("host".into(), Value::String(h.into()));
        }
        out.insert("tcpSocket".into(), Value::Object(tcp));
    } else if let Some(g) = probe.get("grpc").and_then(Node::as_map) {
        let mut grpc = JsonMap::new();
        grpc.insert("port".into(), port(g)?);
        if let Some(s) = g.get_str("service") {
            grpc.insert("service".into(), Value::String(s.into()));
        }
        out.insert("grpc".into(), Value::Object(grpc));
    } else {
        return Ok(None);
    }
    for field in ["periodSeconds", "timeoutSeconds"] {
        if let Some(n) = probe.get_str(field).and_then(|v| v.parse::<u64>().ok()) {
            out.insert(field.into(), Value::from(n));
        }
    }
    Ok(Some(out))
}
