#!/usr/bin/env python3
"""Checks on rendered manifests that schema validation cannot make (SPEC §6 wiring, API-server
rules, monitoring cross-references). Called by scripts/check-deploy.sh; needs PyYAML.

  check_deploy.py pods [--hardened] FILE...      every Vitals pod template is wired per SPEC §6
  check_deploy.py expand-lists IN OUT             writes IN with every `kind: List` replaced by its
      items (kubernetes-validate has no schema for List and would skip them)
  check_deploy.py monitoring RENDERED BASE RULES_OUT
      splits the monitoring render: writes the PrometheusRule groups to RULES_OUT (for
      promtool), prints the core documents (for kubernetes-validate) on stdout, checks the
      PodMonitor against the pods of BASE and the metric names of rules and dashboard.
"""
import json
import re
import sys

import yaml

AGENT = "vitals-agent"
PORT = 9180
SOCKET_DIR = "/run/vitals"
SOCKET = SOCKET_DIR + "/agent.sock"
# SPEC §4 (names as exposed: counters end in _total, histograms add _bucket/_sum/_count).
METRICS = {
    "vitals_probe_requests_total", "vitals_probe_duration_seconds", "vitals_worker_connected",
    "vitals_worker_ready", "vitals_worker_live", "vitals_worker_phase",
    "vitals_worker_heartbeat_age_seconds", "vitals_worker_progress_total",
    "vitals_worker_pending", "vitals_worker_in_flight", "vitals_worker_restarts_total",
    "vitals_worker_hangs_total", "vitals_worker_startup_seconds",
    "vitals_worker_process_cpu_seconds_total", "vitals_worker_process_resident_memory_bytes",
    "vitals_worker_process_threads", "vitals_protocol_errors_total",
    "vitals_protocol_unknown_messages_total",
}
POD_KINDS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}

errors = []


def err(where, msg):
    errors.append(f"{where}: {msg}")


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def pod_spec(doc):
    kind = doc.get("kind")
    if kind == "Pod":
        return doc.get("metadata", {}), doc["spec"]
    if kind == "CronJob":
        t = doc["spec"]["jobTemplate"]["spec"]["template"]
    else:
        t = doc["spec"]["template"]
    return t.get("metadata", {}), t["spec"]


def check_probe(where, probe, path, kind):
    if probe is None:
        err(where, f"no {kind}Probe (want GET {path} on {PORT})")
        return
    get = probe.get("httpGet")
    if not get or get.get("path") != path or get.get("port") != PORT:
        err(where, f"{kind}Probe is {probe}, want httpGet {path} on port {PORT}")
    # The API server rejects these; the schema does not.
    if kind in ("liveness", "startup") and probe.get("successThreshold", 1) != 1:
        err(where, f"{kind}Probe.successThreshold must be 1")


def check_hardened(where, c, pod_sc):
    sc = c.get("securityContext", {})
    if not sc.get("readOnlyRootFilesystem"):
        err(where, "readOnlyRootFilesystem is not true")
    if sc.get("allowPrivilegeEscalation") is not False:
        err(where, "allowPrivilegeEscalation is not false")
    if "ALL" not in sc.get("capabilities", {}).get("drop", []):
        err(where, "capabilities do not drop ALL")
    if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
        err(where, "runAsNonRoot is not set")
    if "resources" not in c or "limits" not in c["resources"]:
        err(where, "no resources.limits")


def check_pods(paths, hardened):
    seen = 0
    for path in paths:
        for doc in load(path):
            if doc.get("kind") not in POD_KINDS:
                continue
            name = f"{path}: {doc['kind']}/{doc['metadata'].get('name')}"
            meta, spec = pod_spec(doc)
            inits = spec.get("initContainers", [])
            mains = spec.get("containers", [])
            agents = [c for c in inits + mains if c["name"] == AGENT]
            if not agents:
                continue  # not a Vitals pod
            seen += 1
            if len(agents) != 1:
                err(name, f"{len(agents)} {AGENT} containers")
                continue
            agent = agents[0]
            native = agent in inits
            if native and agent.get("restartPolicy") != "Always":
                err(name, "agent in initContainers without restartPolicy: Always")
            if not native and "restartPolicy" in agent:
                err(name, "restartPolicy on an ordinary container")
            if spec.get("shareProcessNamespace") is not True:
                err(name, "shareProcessNamespace is not true")
            vols = {v["name"]: v for v in spec.get("volumes", [])}
            sock_vols = [m["name"] for m in agent.get("volumeMounts", []) if m["mountPath"] == SOCKET_DIR]
            if not sock_vols:
                err(name, f"agent does not mount {SOCKET_DIR}")
                continue
            sv = vols.get(sock_vols[0], {})
            if sv.get("emptyDir", {}).get("medium") != "Memory":
                err(name, f"socket volume {sock_vols[0]} is not an emptyDir with medium Memory")
            check_probe(f"{name} {AGENT}", agent.get("livenessProbe"), "/livez", "liveness")
            if not any(p.get("containerPort") == PORT for p in agent.get("ports", [])):
                err(name, f"agent does not declare containerPort {PORT}")
            args = agent.get("args", [])
            expects = {a.split("=", 1)[1] for a in args if a.startswith("--expect=")}
            expects |= {args[i + 1] for i, a in enumerate(args[:-1]) if a == "--expect"}
            workers = [w.strip() for w in meta.get("annotations", {}).get("vitals.dev/workers", "").split(",") if w.strip()]
            if not workers:
                err(name, "no vitals.dev/workers annotation")
            by_name = {c["name"]: c for c in mains}
            for w in workers:
                c = by_name.get(w)
                where = f"{name} container {w}"
                if c is None:
                    err(where, "named in vitals.dev/workers but not a container")
                    continue
                if w not in expects:
                    err(name, f"agent args {args} lack --expect {w}")
                if not any(m["name"] == sock_vols[0] and m["mountPath"] == SOCKET_DIR for m in c.get("volumeMounts", [])):
                    err(where, f"does not mount the socket volume at {SOCKET_DIR}")
                env = {e["name"]: e.get("value") for e in c.get("env", [])}
                cargs = c.get("args", [])
                if env.get("VITALS_AGENT_SOCKET") != SOCKET and f"--agent-socket={SOCKET}" not in cargs:
                    err(where, f"neither VITALS_AGENT_SOCKET={SOCKET} nor --agent-socket")
                if env.get("VITALS_NAME") != w and f"--name={w}" not in cargs:
                    err(where, f"neither VITALS_NAME={w} nor --name={w}")
                check_probe(where, c.get("startupProbe"), f"/startupz/{w}", "startup")
                check_probe(where, c.get("livenessProbe"), f"/livez/{w}", "liveness")
                check_probe(where, c.get("readinessProbe"), f"/readyz/{w}", "readiness")
            for c in inits + mains:
                for kind in ("startup", "liveness", "readiness"):
                    p = c.get(f"{kind}Probe") or {}
                    if p.get("successThreshold", 1) != 1 and kind != "readiness":
                        err(f"{name} container {c['name']}", f"{kind}Probe.successThreshold must be 1")
                if hardened:
                    check_hardened(f"{name} container {c['name']}", c, spec.get("securityContext", {}))
            if hardened and spec.get("automountServiceAccountToken") is not False:
                err(name, "automountServiceAccountToken is not false")
    if seen == 0:
        err(" ".join(paths), "no Vitals pod template found")
    return seen


EXPR_NAME = re.compile(r"\b(vitals_[a-z_]+)")


def check_expr_metrics(where, expr):
    for m in EXPR_NAME.findall(expr):
        base = re.sub(r"_(bucket|sum|count)$", "", m)
        if m not in METRICS and base not in METRICS:
            err(where, f"unknown metric {m} (not in SPEC §4)")


def check_monitoring(rendered, base, rules_out):
    docs = load(rendered)
    core, rules, monitors = [], [], []
    for d in docs:
        if d["apiVersion"].startswith("monitoring.coreos.com/"):
            (rules if d["kind"] == "PrometheusRule" else monitors).append(d)
        else:
            core.append(d)
    if not rules or not monitors:
        err(rendered, "expected a PrometheusRule and a PodMonitor")
    groups = []
    for r in rules:
        for g in r["spec"]["groups"]:
            groups.append(g)
            for rule in g["rules"]:
                where = f"rule {rule.get('alert') or rule.get('record')}"
                check_expr_metrics(where, rule["expr"])
                if "alert" in rule:
                    ann = rule.get("annotations", {})
                    if not ann.get("summary") or "Runbook" not in ann.get("description", ""):
                        err(where, "needs a summary and a description with a Runbook")
                    if "severity" not in rule.get("labels", {}):
                        err(where, "no severity label")
    with open(rules_out, "w") as f:
        yaml.safe_dump({"groups": groups}, f, sort_keys=False)
    # The dashboard, from the ConfigMap the generator made.
    dashboards = 0
    for d in core:
        if d["kind"] == "ConfigMap" and d["metadata"].get("labels", {}).get("grafana_dashboard") == "1":
            for key, text in d["data"].items():
                dash = json.loads(text)
                dashboards += 1

                def walk(panels):
                    for p in panels:
                        walk(p.get("panels", []))
                        for t in p.get("targets", []):
                            check_expr_metrics(f"dashboard {key} panel {p['title']!r}", t["expr"])
                walk(dash["panels"])
                if not dash.get("uid") or not dash.get("title"):
                    err(key, "dashboard needs uid and title")
    if dashboards == 0:
        err(rendered, "no dashboard ConfigMap")
    # The PodMonitor must select the base's pods and name the agent's port.
    pods = []
    for d in load(base):
        if d.get("kind") in POD_KINDS:
            meta, spec = pod_spec(d)
            pods.append((d["metadata"].get("namespace"), meta.get("labels", {}), spec))
    for m in monitors:
        sel = m["spec"]["selector"].get("matchLabels", {})
        hits = [p for p in pods if p[0] == m["metadata"].get("namespace")
                and all(p[1].get(k) == v for k, v in sel.items())]
        if not hits:
            err(f"PodMonitor {m['metadata']['name']}", f"selector {sel} matches no base pod in its namespace")
        for ns, labels, spec in hits:
            ports = {p.get("name") for c in spec.get("initContainers", []) + spec["containers"]
                     if c["name"] == AGENT for p in c.get("ports", [])}
            for ep in m["spec"]["podMetricsEndpoints"]:
                if ep.get("port") not in ports:
                    err(f"PodMonitor {m['metadata']['name']}", f"port {ep.get('port')!r} is not an agent port {ports}")
            job = m["spec"].get("jobLabel")
            if job and job not in labels:
                err(f"PodMonitor {m['metadata']['name']}", f"jobLabel {job} is not a pod label")
    yaml.safe_dump_all(core, sys.stdout, sort_keys=False)


def expand_lists(src, dst):
    def expand(d):
        if d.get("kind") == "List" and d.get("apiVersion") == "v1":
            return [x for item in d.get("items") or [] for x in expand(item)]
        return [d]
    docs = [x for d in load(src) for x in expand(d)]
    with open(dst, "w") as f:
        yaml.safe_dump_all(docs, f, sort_keys=False)


def main(argv):
    if len(argv) == 4 and argv[1] == "expand-lists":
        expand_lists(argv[2], argv[3])
    elif len(argv) >= 2 and argv[1] == "pods":
        hardened = "--hardened" in argv
        files = [a for a in argv[2:] if a != "--hardened"]
        n = check_pods(files, hardened)
        print(f"deploy-check: {n} Vitals pod templates wired per SPEC §6")
    elif len(argv) == 5 and argv[1] == "monitoring":
        check_monitoring(argv[2], argv[3], argv[4])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
