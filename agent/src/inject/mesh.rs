//! Pods a service mesh injected before Vitals (SPEC §11 "Meshes"): Istio's probe rewrite
//! undone for the probes the agent takes over, the mesh proxies' own probes left to the
//! kubelet, and the agent's port excluded from the mesh's traffic capture, in the mesh's
//! init container (rendered at the mesh's injection, before ours) and in the annotations its
//! CNI plugin reads when the pod's network is set up (after admission).
//!
//! What the meshes do, from their source:
//! - istio/istio `pkg/kube/inject/app_probe.go`: every container's httpGet/tcpSocket/grpc
//!   probe becomes an httpGet of `/app-health/<container>/{readyz,livez,startupz}` on
//!   pilot-agent's status port (15020), keeping the probe's timing; the original handler and
//!   `timeoutSeconds` (type `Prober`, named ports resolved) go into istio-proxy's env
//!   `ISTIO_KUBE_APP_PROBERS`, a JSON object keyed by that URL. An https original is
//!   rewritten to a plain-HTTP probe of pilot-agent, which then calls the app over https.
//! - istio/istio `manifests/charts/istio-control/istio-discovery/files/injection-template.yaml`:
//!   `istio-init` (no CNI) or `istio-validation` (CNI, `--run-validation --skip-rule-apply`)
//!   with `istio-iptables` args `-d <inbound ports excluded>` and, when configured,
//!   `-o <outbound ports excluded>`; istio-proxy as a container or, with native sidecars,
//!   an init container with `restartPolicy: Always`.
//! - istio/istio `cni/pkg/plugin/sidecar_redirect.go`: the CNI plugin reads
//!   `traffic.sidecar.istio.io/excludeInboundPorts` / `excludeOutboundPorts` from the pod
//!   (a comma list, or `*`), each defaulting to the status port 15020 when absent.
//! - istio/istio `tools/istio-iptables/pkg/capture/run.go`: "do not redirect app calls to back
//!   itself via Envoy when using the endpoint address" (`-o lo ... ! --uid-owner` RETURN):
//!   the agent's probes of the model server at `$POD_IP` bypass Envoy, as pilot-agent's do
//!   (Linkerd's PROXY_INIT_OUTPUT returns loopback traffic too), so only the kubelet's
//!   probes and a leader's polls need the agent's port out of capture.
//! - linkerd/linkerd2 `charts/partials/templates/_proxy-init.tpl`: `linkerd-init` with
//!   `--inbound-ports-to-ignore <control>,<admin>[,configured]` and, when configured,
//!   `--outbound-ports-to-ignore`; `pkg/inject/inject.go` and `pkg/k8s/labels.go`: the
//!   annotations `config.linkerd.io/skip-inbound-ports` / `skip-outbound-ports` replace the
//!   configured lists; `_proxy.tpl`: linkerd-proxy's probes on its admin port, the control
//!   and admin ports in `LINKERD2_PROXY_{CONTROL,ADMIN}_LISTEN_ADDR`.
//! - linkerd/linkerd2-proxy-init `cni-plugin/main.go`: for a pod with linkerd-proxy and no
//!   linkerd-init, the CNI plugin's configured lists (linkerd/linkerd2
//!   `charts/linkerd2-cni/templates/cni-plugin.yaml`: the proxy's admin and control ports,
//!   then `ignoreInboundPorts`) are REPLACED by the pod's (or else the namespace's)
//!   `config.linkerd.io/skip-*-ports` annotation.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map as JsonMap, Value};

use super::error::shape;
use super::webhook::convert::to_tree;
use super::yaml::{Map, Node};
use super::{Problem, AGENT_PORT};
use vitals_core::upstreams::ProbeKind;

/// pilot-agent's status port (istio values.yaml `global.proxy.statusPort`).
const ISTIO_STATUS_PORT: u16 = 15020;
/// Istio's proxy container (`pkg/kube/inject` ProxyContainerName).
const ISTIO_PROXY: &str = "istio-proxy";
/// Linkerd's proxy container.
const LINKERD_PROXY: &str = "linkerd-proxy";
/// istio-proxy's env var with the app's original probes (pilot-agent `status` package,
/// KubeAppProberEnvName).
const ISTIO_APP_PROBERS_ENV: &str = "ISTIO_KUBE_APP_PROBERS";

/// Whether `name` is a mesh's proxy container: its probes are the mesh's own and are never
/// taken over, whether it is an ordinary container or a native sidecar.
pub(super) fn is_mesh_proxy(name: &str) -> bool {
    name == ISTIO_PROXY || name == LINKERD_PROXY
}

/// One original probe as Istio keeps it (app_probe.go `Prober`): the handler and the timeout
/// only; the period and thresholds stayed on the rewritten probe.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Prober {
    http_get: Option<JsonMap<String, Value>>,
    tcp_socket: Option<JsonMap<String, Value>>,
    grpc: Option<JsonMap<String, Value>>,
    timeout_seconds: Option<u32>,
}

impl Prober {
    /// The handler's key and value, as they stood on the container.
    fn handler(&self) -> Option<(&'static str, &JsonMap<String, Value>)> {
        [
            ("httpGet", &self.http_get),
            ("tcpSocket", &self.tcp_socket),
            ("grpc", &self.grpc),
        ]
        .into_iter()
        .find_map(|(key, h)| h.as_ref().map(|h| (key, h)))
    }

    /// An https original: pilot-agent calls it over TLS for the kubelet, which Vitals does
    /// not (SPEC §8), so that probe stays with the kubelet as Istio left it.
    fn is_https(&self) -> bool {
        self.http_get
            .as_ref()
            .and_then(|h| h.get("scheme"))
            .and_then(Value::as_str)
            .is_some_and(|s| s.eq_ignore_ascii_case("https"))
    }
}

/// pilot-agent's URL for a container's probe (pilot-agent `status.FormatProberURL`).
fn istio_url(container: &str, kind: ProbeKind) -> String {
    let kind = match kind {
        ProbeKind::Readiness => "readyz",
        ProbeKind::Liveness => "livez",
        ProbeKind::Startup => "startupz",
    };
    format!("/app-health/{container}/{kind}")
}

/// The app's original probes that Istio moved into istio-proxy's env, by pilot-agent URL;
/// empty when the pod has no istio-proxy or Istio did not rewrite its probes
/// (`sidecar.istio.io/rewriteAppHTTPProbers: "false"`).
#[derive(Debug, Default)]
pub(super) struct IstioOriginals(BTreeMap<String, Prober>);

/// Probes set aside by [`IstioOriginals::restore`]: they stay with the kubelet, and go back
/// where they were with [`KeptProbes::put_back`].
#[derive(Debug, Default)]
pub(super) struct KeptProbes(Vec<(usize, String, Node)>);

impl IstioOriginals {
    /// Reads istio-proxy's `ISTIO_KUBE_APP_PROBERS` (a container or a native sidecar).
    pub(super) fn of(spec: &Map, warnings: &mut Vec<String>) -> Self {
        let text = env_value(spec, ISTIO_PROXY, ISTIO_APP_PROBERS_ENV);
        let Some(text) = text else {
            return Self::default();
        };
        match serde_json::from_str(text) {
            Ok(probers) => Self(probers),
            Err(e) => {
                warnings.push(format!(
                    "warning: {ISTIO_PROXY}'s {ISTIO_APP_PROBERS_ENV} is not Istio's JSON ({e}): probes Istio pointed at pilot-agent are taken over as they are, so /proc and metrics look at pilot-agent's port"
                ));
                Self::default()
            }
        }
    }

    /// Undoes Istio's rewrite of container `name`'s probes: each probe pointing at
    /// pilot-agent gets its original handler and timeout back, keeping the rewritten probe's
    /// period and thresholds (Istio copied them from the original). Returns the probes whose
    /// original is https, taken off the container so that the transform leaves them with
    /// the kubelet; put them back with [`KeptProbes::put_back`].
    pub(super) fn restore(&self, c: &mut Map, name: &str) -> KeptProbes {
        let mut kept = KeptProbes::default();
        if self.0.is_empty() {
            return kept;
        }
        for kind in ProbeKind::ALL {
            let key = kind.key();
            let url = istio_url(name, kind);
            let Some(original) = self.0.get(&url) else {
                continue;
            };
            let rewritten = c
                .get(key)
                .and_then(Node::as_map)
                .and_then(|p| p.get("httpGet"))
                .and_then(Node::as_map)
                .is_some_and(|h| h.get_str("path") == Some(url.as_str()));
            if !rewritten {
                continue;
            }
            if original.is_https() {
                if let (Some(at), Some(node)) = (c.position(key), c.remove(key)) {
                    kept.0.push((at, key.to_string(), node));
                }
                continue;
            }
            let Some(probe) = c.get_mut(key).and_then(Node::as_map_mut) else {
                continue;
            };
            let Some((handler, fields)) = original.handler() else {
                continue;
            };
            let at_handler = probe.position("httpGet").unwrap_or(0);
            probe.remove("httpGet");
            probe.insert_at(at_handler, handler, to_tree(&Value::Object(fields.clone())));
            match original.timeout_seconds {
                Some(t) => {
                    probe.set("timeoutSeconds", Node::plain(t.to_string()));
                }
                // Go's omitempty: 0, the kubelet's default of 1 s.
                None => {
                    probe.remove("timeoutSeconds");
                }
            }
        }
        kept
    }
}

impl KeptProbes {
    /// Puts the probes back where they were.
    pub(super) fn put_back(self, c: &mut Map) {
        // Each position was taken after the removals before it: undo them last to first.
        for (at, key, node) in self.0.into_iter().rev() {
            c.insert_at(at, &key, node);
        }
    }
}

/// Every container of a pod spec, init containers first.
fn all_containers(spec: &Map) -> impl Iterator<Item = &Map> {
    ["initContainers", "containers"]
        .into_iter()
        .flat_map(|key| spec.get(key).and_then(Node::as_seq).into_iter().flatten())
        .filter_map(Node::as_map)
}

/// The value of env var `var` of container `container` (a container or a native sidecar).
fn env_value<'a>(spec: &'a Map, container: &str, var: &str) -> Option<&'a str> {
    all_containers(spec)
        .find(|c| c.get_str("name") == Some(container))?
        .get("env")?
        .as_seq()?
        .iter()
        .filter_map(Node::as_map)
        .find(|e| e.get_str("name") == Some(var))?
        .get_str("value")
}

/// Which way traffic is excluded from capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// The kubelet's probes and a leader's polls reaching this pod's agent.
    Inbound,
    /// A leader's agent polling its members.
    Outbound,
}

/// Where one mesh keeps one direction's exclusions.
struct Exclusion {
    /// The mesh's init containers that carry the list as a flag.
    init_containers: &'static [&'static str],
    /// Its flags (short and long spellings).
    flags: &'static [&'static str],
    /// The annotation its CNI plugin reads.
    annotation: &'static str,
}

/// Istio: `istio-iptables` flags (tools/istio-iptables; `-d`/`-o` in the injection template)
/// and the annotations of `cni/pkg/plugin/sidecar_redirect.go`. istio-validation carries the
/// same args as istio-init would, so its record stays the pod's one truth.
fn istio(direction: Direction) -> Exclusion {
    const INIT: &[&str] = &["istio-init", "istio-validation"];
    match direction {
        Direction::Inbound => Exclusion {
            init_containers: INIT,
            flags: &["-d", "--inbound-ports-exclude"],
            annotation: "traffic.sidecar.istio.io/excludeInboundPorts",
        },
        Direction::Outbound => Exclusion {
            init_containers: INIT,
            flags: &["-o", "--outbound-ports-exclude"],
            annotation: "traffic.sidecar.istio.io/excludeOutboundPorts",
        },
    }
}

/// Linkerd: linkerd2-proxy-init's flags (`_proxy-init.tpl`) and the annotations of
/// `pkg/k8s/labels.go` that its CNI plugin reads.
fn linkerd(direction: Direction) -> Exclusion {
    const INIT: &[&str] = &["linkerd-init"];
    match direction {
        Direction::Inbound => Exclusion {
            init_containers: INIT,
            flags: &["--inbound-ports-to-ignore"],
            annotation: "config.linkerd.io/skip-inbound-ports",
        },
        Direction::Outbound => Exclusion {
            init_containers: INIT,
            flags: &["--outbound-ports-to-ignore"],
            annotation: "config.linkerd.io/skip-outbound-ports",
        },
    }
}

/// Excludes the agent's port from the traffic capture of every mesh in the pod template
/// (`metadata` + `spec`): inbound always (the kubelet's probes, a leader's polls), outbound
/// too for a group leader (its polls of the members). Each list keeps every value already
/// there; the port is added once. A mesh that is not in the pod (no proxy container) is
/// left alone: its annotations would change what that mesh does if it injected later.
pub(super) fn exclude_agent_port(
    tmpl: &mut Map,
    leader: bool,
    warnings: &mut Vec<String>,
) -> Result<(), Problem> {
    let spec = tmpl
        .map_entry("spec")
        .ok_or_else(|| shape("spec", "mapping"))?;
    let has = |proxy: &str| all_containers(spec).any(|c| c.get_str("name") == Some(proxy));
    let (istio_here, linkerd_here) = (has(ISTIO_PROXY), has(LINKERD_PROXY));
    let linkerd_proxy_ports = linkerd_proxy_ports(spec);
    let directions: &[Direction] = if leader {
        &[Direction::Inbound, Direction::Outbound]
    } else {
        &[Direction::Inbound]
    };
    let mut annotations = Vec::new();
    for &direction in directions {
        if istio_here {
            let ex = istio(direction);
            merge_into_init_args(spec, &ex, direction)?;
            // A missing annotation is, to Istio's CNI plugin, its status port 15020 (and it
            // adds 15020,15021,15090 inbound whatever the annotation says).
            annotations.push((ex.annotation, ISTIO_STATUS_PORT.to_string(), false));
        }
        if linkerd_here {
            let ex = linkerd(direction);
            let merged = merge_into_init_args(spec, &ex, direction)?;
            // Without linkerd-init (linkerd-cni), the annotation replaces the plugin's
            // configured list, which starts with the proxy's own ports (cni-plugin.yaml).
            let (seed, under_cni) = match (merged, direction) {
                (Some(list), _) => (list, false),
                (None, Direction::Inbound) => (linkerd_proxy_ports.join(","), true),
                (None, Direction::Outbound) => (String::new(), true),
            };
            annotations.push((ex.annotation, seed, under_cni));
        }
    }
    if annotations.is_empty() {
        return Ok(());
    }
    let metadata = tmpl
        .map_entry("metadata")
        .ok_or_else(|| shape("metadata", "mapping"))?;
    let map = metadata
        .map_entry("annotations")
        .ok_or_else(|| shape("metadata.annotations", "mapping"))?;
    for (key, seed, replaces_cni_config) in annotations {
        match map.get_str(key).map(str::to_string) {
            Some(list) => {
                if let Some(merged) = with_agent_port(&list) {
                    map.set(key, Node::string(merged));
                }
            }
            None => {
                let value = with_agent_port(&seed).unwrap_or(seed);
                if replaces_cni_config {
                    warnings.push(format!(
                        "warning: {key} was not set, so linkerd-cni used its configured list or the namespace's annotation; the pod's annotation replaces both, and is now {value:?}: add any port they skip"
                    ));
                }
                map.set(key, Node::string(value));
            }
        }
    }
    Ok(())
}

/// linkerd-proxy's control and admin ports (`_proxy.tpl`: `LINKERD2_PROXY_CONTROL_LISTEN_ADDR`,
/// `LINKERD2_PROXY_ADMIN_LISTEN_ADDR`, `[::]:4190` and `[::]:4191` by default), which
/// Linkerd always keeps out of capture.
fn linkerd_proxy_ports(spec: &Map) -> Vec<String> {
    [
        "LINKERD2_PROXY_CONTROL_LISTEN_ADDR",
        "LINKERD2_PROXY_ADMIN_LISTEN_ADDR",
    ]
    .iter()
    .filter_map(|name| {
        let addr = env_value(spec, LINKERD_PROXY, name)?;
        let port = addr.rsplit_once(':')?.1;
        port.parse::<u16>().is_ok().then(|| port.to_string())
    })
    .collect()
}

/// Merges the agent's port into the flag's list in each of the mesh's init containers;
/// a leader's outbound flag is added where the mesh rendered none. Returns the list as it
/// now is in the first of them, `None` where there is no such container or flag.
fn merge_into_init_args(
    spec: &mut Map,
    ex: &Exclusion,
    direction: Direction,
) -> Result<Option<String>, Problem> {
    let mut result = None;
    let Some(inits) = spec.get_mut("initContainers").and_then(Node::as_seq_mut) else {
        return Ok(None);
    };
    for c in inits.iter_mut().filter_map(Node::as_map_mut) {
        let Some(name) = c.get_str("name").filter(|n| ex.init_containers.contains(n)) else {
            continue;
        };
        let name = name.to_string();
        let args = c
            .seq_entry("args")
            .ok_or_else(|| shape(&format!("container {name}: args"), "list"))?;
        let list = match flag_value(args, ex.flags) {
            Some(slot) => {
                let current = slot.as_str().unwrap_or("").to_string();
                let merged = with_agent_port(&current).unwrap_or(current);
                if slot.as_str() != Some(merged.as_str()) {
                    *slot = Node::string(merged.clone());
                }
                merged
            }
            None if direction == Direction::Outbound => {
                let port = AGENT_PORT.to_string();
                args.push(Node::string(ex.flags[0]));
                args.push(Node::string(port.clone()));
                port
            }
            None => continue,
        };
        result.get_or_insert(list);
    }
    Ok(result)
}

/// The arg holding `flags`' value: the one after the flag (`-d 15090,15021`). A
/// `--flag=value` arg is rewritten to the two-arg form first, so there is one slot to edit.
fn flag_value<'a>(args: &'a mut Vec<Node>, flags: &[&str]) -> Option<&'a mut Node> {
    let joined = args.iter().position(|a| {
        a.as_str().is_some_and(|a| {
            flags
                .iter()
                .any(|f| a.strip_prefix(f).is_some_and(|rest| rest.starts_with('=')))
        })
    });
    if let Some(i) = joined {
        let text = args[i].as_str().unwrap_or("").to_string();
        if let Some((flag, value)) = text.split_once('=') {
            args[i] = Node::string(flag);
            args.insert(i + 1, Node::string(value));
        }
    }
    let i = args
        .iter()
        .position(|a| a.as_str().is_some_and(|a| flags.contains(&a)))?;
    args.get_mut(i + 1)
}

/// `list` (comma-separated ports, as both meshes write them) with the agent's port
/// appended; `None` when it already covers the port: the port itself, a range `a-b` around
/// it (Linkerd's syntax), or `*` (Istio's "every port").
fn with_agent_port(list: &str) -> Option<String> {
    let covers = |entry: &str| {
        let entry = entry.trim();
        if entry == "*" {
            return true;
        }
        match entry.split_once('-') {
            Some((lo, hi)) => matches!(
                (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()),
                (Ok(lo), Ok(hi)) if (lo..=hi).contains(&AGENT_PORT)
            ),
            None => entry.parse::<u16>() == Ok(AGENT_PORT),
        }
    };
    if list.split(',').any(covers) {
        return None;
    }
    let kept = list.trim().trim_end_matches(',');
    Some(if kept.is_empty() {
        AGENT_PORT.to_string()
    } else {
        format!("{kept},{AGENT_PORT}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_port_joins_a_list_once() {
        for (list, merged) in [
            ("", Some("9180")),
            ("15090,15021,15020", Some("15090,15021,15020,9180")),
            ("4190,4191,", Some("4190,4191,9180")),
            ("15020, 9180", None),
            ("9000-9999", None),
            ("9181-9200", Some("9181-9200,9180")),
            ("*", None),
        ] {
            assert_eq!(with_agent_port(list).as_deref(), merged, "{list:?}");
        }
    }

    #[test]
    fn https_originals_go_back_where_they_were() {
        let probers = r#"{"/app-health/app/livez": {"httpGet": {"port": 8443, "scheme": "HTTPS"}},
            "/app-health/app/readyz": {"httpGet": {"port": 8443, "scheme": "HTTPS"}}}"#;
        let istio = IstioOriginals(serde_json::from_str(probers).expect("Istio's shape"));
        let probe = |kind: &str| {
            let get = Map::from_pairs([
                ("path", Node::string(format!("/app-health/app/{kind}"))),
                ("port", Node::plain("15020")),
            ]);
            Node::Map(Map::from_pairs([("httpGet", Node::Map(get))]))
        };
        let mut c = Map::from_pairs([
            ("name", Node::string("app")),
            ("livenessProbe", probe("livez")),
            ("readinessProbe", probe("readyz")),
            ("image", Node::string("app:1")),
        ]);
        let before = c.clone();
        let kept = istio.restore(&mut c, "app");
        let keys: Vec<&str> = c.0.iter().map(|(k, _)| k.value.as_str()).collect();
        assert_eq!(
            keys,
            ["name", "image"],
            "set aside while the transform runs"
        );
        kept.put_back(&mut c);
        assert_eq!(c, before);
    }

    #[test]
    fn a_joined_flag_is_split_into_one_editable_slot() {
        let mut args: Vec<Node> = ["istio-iptables", "-d=15090,15021", "-m", "REDIRECT"]
            .into_iter()
            .map(Node::string)
            .collect();
        let slot = flag_value(&mut args, &["-d"]).expect("the flag is there");
        assert_eq!(slot.as_str(), Some("15090,15021"));
        let words: Vec<&str> = args.iter().filter_map(Node::as_str).collect();
        assert_eq!(
            words,
            ["istio-iptables", "-d", "15090,15021", "-m", "REDIRECT"]
        );
    }
}
