//! Upstream containers (SPEC §8): containers that don't speak the protocol but have
//! probes. Their `httpGet`/`tcpSocket`/`grpc` probes move into the agent's
//! `VITALS_UPSTREAMS` (named ports resolved, period and timeout kept) and are replaced by
//! `httpGet` probes on the agent's port, keeping the period and thresholds the kubelet
//! applies, with `timeoutSeconds: 1`: the agent answers from memory. `exec` and `https`
//! probes stay on the container untouched. A metrics profile is picked from the image or
//! the `vitals.dev/profile.<container>` annotation.
//!
//! The entry is built as the typed schema ([`vitals_core::upstreams::schema`]) and
//! serialised, so the agent's reader accepts whatever this writes. Each entry records the
//! container's `command` + `args` (`process.cmdline`), by which the agent finds its process
//! in /proc without privileges.
//!
//! Re-injection finds the container's probes already pointing at the agent and takes
//! their original form from the agent's existing `VITALS_UPSTREAMS`, so the rewrite is
//! idempotent and updates in place; probes on the agent for a container that env has no
//! entry for are refused, their originals being lost.

use std::collections::BTreeMap;

use super::probes::{agent_path, ensure_probe, point_at_agent, points_at_agent, GROUP_LIVENESS};
use super::yaml::{Map, Node};
use super::Problem;
use vitals_core::upstreams::profiles;
use vitals_core::upstreams::schema;
use vitals_core::upstreams::ProbeKind;
use vitals_proto::env;

/// Pod annotation prefix choosing a container's metrics profile (`none` for no metrics).
pub const PROFILE_ANNOTATION_PREFIX: &str = "vitals.dev/profile.";

/// Pod annotation prefix asking for a container's canary (SPEC §12): `on` (the profile's
/// default request), `off`, or the `"canary"` object as JSON.
pub const CANARY_ANNOTATION_PREFIX: &str = "vitals.dev/canary.";

/// `container → value` from the pod template's `<prefix><c>` annotations
/// (`vitals.dev/profile.<c>`, `vitals.dev/canary.<c>`).
pub(super) fn annotations(tmpl: &Map, prefix: &str) -> BTreeMap<String, String> {
    tmpl.get("metadata")
        .and_then(Node::as_map)
        .and_then(|m| m.get("annotations"))
        .and_then(Node::as_map)
        .map(|a| {
            a.0.iter()
                .filter_map(|(k, v)| {
                    let c = k.value.strip_prefix(prefix)?;
                    Some((c.to_string(), v.as_str()?.trim().to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The upstreams an earlier injection gave the agent (empty when none or unreadable: the
/// entries are then rebuilt from the containers).
pub(super) fn previous_config(agent: &Map) -> schema::Upstreams {
    agent
        .get("env")
        .and_then(Node::as_seq)
        .into_iter()
        .flatten()
        .filter_map(Node::as_map)
        .find(|e| e.get_str("name") == Some(env::UPSTREAMS))
        .and_then(|e| e.get_str("value"))
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default()
}

/// A group member's container without probes (a headless Ray or torch.distributed
/// worker, SPEC §9): an entry with only its process, judged by /proc alone, and a liveness
/// probe on the agent so `stopped`/`uninterruptible` restart it. Conservative timing (see
/// [`GROUP_LIVENESS`]): restarting a member costs the whole group.
pub(super) fn wire_headless(
    c: &mut Map,
    name: &str,
    warnings: &mut Vec<String>,
) -> schema::Upstream {
    let process = process(c);
    if process.is_none() {
        warnings.push(format!(
            "warning: container {name}: no command or args to recognise its process by; the agent finds it by its cgroup alone"
        ));
    }
    let live = ProbeKind::Liveness;
    if c.get(live.key()).is_none() {
        ensure_probe(c, live, &agent_path(live, name), GROUP_LIVENESS);
    }
    schema::Upstream {
        process,
        ..schema::Upstream::default()
    }
}

/// Takes over one container's probes; returns its upstream entry and metrics profile, or
/// `None` when it has no probe the agent can run (it is then left alone).
/// Probes already on the agent (an earlier injection) take their originals from
/// `previous`, the container's entry in the agent's config; without one they are refused
/// ([`Problem::OriginalProbeUnknown`]).
pub(super) fn wire_upstream(
    c: &mut Map,
    name: &str,
    previous: Option<&schema::Upstream>,
    profile_override: Option<&str>,
    warnings: &mut Vec<String>,
) -> Result<Option<(schema::Upstream, Option<&'static str>)>, Problem> {
    let ports = named_ports(c);
    let mut entry = schema::Upstream::default();
    // Probes on the agent take their originals back from the agent's config; one the
    // agent was never told about would be answered 404 (a worker's path) or passed
    // unchecked (a group pod's headless entry), so it is refused, not carried over.
    let on_agent: Vec<&str> = ProbeKind::ALL
        .into_iter()
        .filter(|&kind| {
            c.get(kind.key())
                .and_then(Node::as_map)
                .is_some_and(|p| points_at_agent(p, &agent_path(kind, name)))
        })
        .map(ProbeKind::key)
        .collect();
    let mut originals = match previous {
        Some(p) => p.clone(),
        None if on_agent.is_empty() => schema::Upstream::default(),
        None => {
            return Err(Problem::OriginalProbeUnknown {
                container: name.to_string(),
                probes: on_agent.join(", "),
            })
        }
    };
    for kind in ProbeKind::ALL {
        let Some(probe) = c.get_mut(kind.key()).and_then(Node::as_map_mut) else {
            continue;
        };
        let path = agent_path(kind, name);
        let slot = probe_slot(&mut entry, kind);
        if points_at_agent(probe, &path) {
            *slot = probe_slot(&mut originals, kind).take();
            continue;
        }
        let Some(original) = original_probe(probe, &ports, name, kind.key())? else {
            continue;
        };
        *slot = Some(original);
        point_at_agent(probe, &path);
        probe.set("timeoutSeconds", Node::plain("1"));
    }
    let probes = [
        &entry.startup_probe,
        &entry.liveness_probe,
        &entry.readiness_probe,
    ];
    if probes.iter().all(|p| p.is_none()) {
        return Ok(None);
    }
    let has_http = probes
        .iter()
        .any(|p| p.as_ref().is_some_and(|p| p.http_get.is_some()));
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
    let profile = profile.filter(|p| {
        let ok = has_http || profiles::builtin(p).is_some_and(|p| p.port.is_some());
        if !ok {
            warnings.push(format!(
                "warning: container {name}: no httpGet probe to find its /metrics port, so no {p} metrics (hung-engine detection off)"
            ));
        }
        ok
    });
    entry.metrics = match (profile, profile_override) {
        (Some(p), _) => Some(schema::Metrics::Profile(p.to_string())),
        // A custom metrics object someone put in the agent's config stays, unless the
        // annotation says otherwise.
        (None, None) => previous
            .and_then(|p| p.metrics.clone())
            .filter(|m| matches!(m, schema::Metrics::Custom(_))),
        (None, Some(_)) => None,
    };
    entry.process = process(c);
    Ok(Some((entry, profile)))
}

/// The container's canary (SPEC §12) from its `vitals.dev/canary.<c>` annotation: `on` →
/// the profile's default (`{}`), `off` → none, a JSON object → that object; without the
/// annotation, the one an earlier injection or an operator wrote stays. Checked as the
/// agent will read it (`entry`'s probes give the port, `profile` the default request), so
/// inject never writes a canary the agent refuses.
pub(super) fn canary(
    name: &str,
    entry: &schema::Upstream,
    annotation: Option<&str>,
    previous: Option<&schema::Upstream>,
    profile: Option<&str>,
) -> Result<Option<schema::Canary>, Problem> {
    let bad = |problem: String| Problem::BadCanary {
        container: name.to_string(),
        problem,
    };
    let canary = match annotation {
        None => previous.and_then(|p| p.canary.clone()),
        Some("off") => None,
        Some("on") => Some(schema::Canary::default()),
        Some(json) => Some(serde_json::from_str::<schema::Canary>(json).map_err(|e| {
            bad(format!(
                "expected on, off or a canary object ({{\"request\", \"idle\", \"deadline\"}}): {e}"
            ))
        })?),
    };
    if let Some(c) = &canary {
        let http = [
            &entry.startup_probe,
            &entry.liveness_probe,
            &entry.readiness_probe,
        ]
        .into_iter()
        .flatten()
        .find_map(|p| match &p.http_get.as_ref()?.port {
            schema::Port::Number(n) => {
                Some((p.http_get.as_ref()?.host.clone(), u16::try_from(*n).ok()?))
            }
            schema::Port::Name(_) => None,
        });
        vitals_core::upstreams::canary::resolve(c, &format!("{name}.canary"), profile, http)
            .map_err(|e| bad(e.to_string()))?;
    }
    Ok(canary)
}

/// The container's `command` + `args` as the agent matches them against
/// `/proc/<pid>/cmdline`; `None` when it gives neither (the image's entrypoint runs, which
/// the pod spec does not show).
pub(super) fn process(c: &Map) -> Option<schema::Process> {
    let words = |key: &str| -> Vec<String> {
        c.get(key)
            .and_then(Node::as_seq)
            .into_iter()
            .flatten()
            .filter_map(Node::as_str)
            .map(str::to_string)
            .collect()
    };
    let cmdline: Vec<String> = words("command").into_iter().chain(words("args")).collect();
    (!cmdline.is_empty()).then_some(schema::Process { cmdline })
}

/// Where an upstream entry keeps the container's `kind` probe.
fn probe_slot(entry: &mut schema::Upstream, kind: ProbeKind) -> &mut Option<schema::Probe> {
    match kind {
        ProbeKind::Startup => &mut entry.startup_probe,
        ProbeKind::Liveness => &mut entry.liveness_probe,
        ProbeKind::Readiness => &mut entry.readiness_probe,
    }
}

/// The container's named ports.
fn named_ports(c: &Map) -> Vec<(String, u16)> {
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

/// The probe as the agent's config wants it, or `None` for what stays on the container
/// (exec, https, no handler).
fn original_probe(
    probe: &Map,
    ports: &[(String, u16)],
    container: &str,
    key: &'static str,
) -> Result<Option<schema::Probe>, Problem> {
    let port = |h: &Map| -> Result<schema::Port, Problem> {
        let raw = h.get_str("port").unwrap_or("");
        if let Ok(n) = raw.parse::<i64>() {
            return Ok(schema::Port::Number(n));
        }
        ports
            .iter()
            .find(|(n, _)| n == raw)
            .map(|(_, p)| schema::Port::from(*p))
            .ok_or_else(|| Problem::UnknownPort {
                container: container.to_string(),
                probe: key,
                port: raw.to_string(),
            })
    };
    let text = |m: &Map, field: &str| m.get_str(field).map(str::to_string);
    let mut out = schema::Probe::default();
    if let Some(h) = probe.get("httpGet").and_then(Node::as_map) {
        if h.get_str("scheme")
            .is_some_and(|s| !s.eq_ignore_ascii_case("http"))
        {
            return Ok(None);
        }
        let http_headers = h
            .get("httpHeaders")
            .and_then(Node::as_seq)
            .into_iter()
            .flatten()
            .filter_map(Node::as_map)
            .map(|m| schema::HttpHeader {
                name: m.get_str("name").unwrap_or("").to_string(),
                value: m.get_str("value").unwrap_or("").to_string(),
            })
            .collect();
        out.http_get = Some(schema::HttpGet {
            path: text(h, "path"),
            port: port(h)?,
            host: text(h, "host"),
            scheme: None,
            http_headers,
        });
    } else if let Some(t) = probe.get("tcpSocket").and_then(Node::as_map) {
        out.tcp_socket = Some(schema::TcpSocket {
            port: port(t)?,
            host: text(t, "host"),
        });
    } else if let Some(g) = probe.get("grpc").and_then(Node::as_map) {
        out.grpc = Some(schema::Grpc {
            port: port(g)?,
            service: text(g, "service"),
        });
    } else {
        return Ok(None);
    }
    let seconds = |field: &str| probe.get_str(field).and_then(|v| v.parse::<u64>().ok());
    out.period_seconds = seconds("periodSeconds");
    out.timeout_seconds = seconds("timeoutSeconds");
    Ok(Some(out))
}
