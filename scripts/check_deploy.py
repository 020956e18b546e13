#!/usr/bin/env python3
"""Checks on rendered manifests that schema validation cannot make: SPEC §6 wiring, API-server
rules, Pod Security `restricted`, the timing arithmetic of docs/probes.md, autoscaling and
disruption consistency, monitoring cross-references and alert test coverage, the docs' links. Called by
scripts/check-deploy.sh; needs PyYAML.

  check_deploy.py split RENDERED CORE_OUT CRDS_JSON_OUT
      writes the core documents (for kubernetes-validate) and the custom resources (as a
      JSON array, for scripts/crd-schemas/validate.mjs) apart; prints the oldest Kubernetes
      minor the render can run on (1.29, or 1.33 with `image` volumes)
  check_deploy.py pods [--hardened] FILE...      every Vitals pod template is wired per SPEC §6;
      --hardened adds Pod Security `restricted` and container hardening for every pod template
  check_deploy.py policy RENDERED QUERIES_OUT    one rendered overlay: drain and grace
      arithmetic, liveness tolerance above the agent's worst restart, replicas against the
      PodDisruptionBudget and autoscalers, GPU settings, namespaces, NetworkPolicy ports; the
      KEDA queries are written to QUERIES_OUT as recording rules (for promtool)
  check_deploy.py expand-lists IN OUT             writes IN with every `kind: List` replaced by its
      items (kubernetes-validate has no schema for List and would skip them)
  check_deploy.py monitoring RENDERED BASE RULES_OUT TEST_DIR ROOT
      splits the monitoring render: writes the PrometheusRule groups to RULES_OUT (for
      `promtool check rules`) and, with annotations left out, to TEST_DIR/vitals-rules.yaml
      (for `promtool test rules`), prints the core documents on stdout, checks the PodMonitor
      against the pods of BASE, metric names, that every alert's runbook_url is its heading
      of ROOT/docs/troubleshooting.md, and that every alert has a unit test that fires it and
      one that must not
  check_deploy.py links FILE.md...                every relative link and #anchor of these
      markdown files resolves (GitHub's anchor rule)
"""
import json
import re
import sys
from pathlib import Path

import yaml

AGENT = "vitals-agent"
PORT = 9180
SOCKET_DIR = "/run/vitals"
SOCKET = SOCKET_DIR + "/agent.sock"
ROOT = Path(__file__).resolve().parent.parent
POD_KINDS = {"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob"}
CLUSTER_SCOPED = {"Namespace", "PriorityClass", "RuntimeClass", "ClusterRole", "ClusterRoleBinding"}
# Pod Security Standards, `restricted` (kubernetes/kubernetes,
# staging/src/k8s.io/pod-security-admission/policy/check_restrictedVolumes.go; `image` allowed
# from 1.33 on, PR 130394).
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "image",
                      "persistentVolumeClaim", "projected", "secret"}

# The kubelet's restart of a crashed container waits 0 s, then 10, 20, 40 s ... (doubling,
# at most 300 s; kubernetes/kubernetes pkg/kubelet/kuberuntime/kuberuntime_manager.go
# doBackOff and pkg/kubelet/kubelet.go MaxContainerBackOff). docs/probes.md, "The agent
# restarting", explains which of these the worker's liveness must outlast.
CRASH_BACKOFF_COVERED = 40  # the 4th crash in a row
BACKOFF_AFTER_WEDGE = 20    # a wedge right after two crashes
AGENT_START = 2             # exit noticed (PLEG) + container start + listening
DRAIN_MARGIN = 5            # seconds left in the grace period after everything above

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


def seconds(text):
    """A humantime-like duration (`5s`, `1m30s`, `500ms`) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(text))
    if not parts or "".join(n + u for n, u in parts) != str(text):
        raise ValueError(f"not a duration with units: {text!r}")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


def env_of(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


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
    if set(sc.get("capabilities", {}).get("add", [])) - {"NET_BIND_SERVICE"}:
        err(where, "adds capabilities beyond NET_BIND_SERVICE (Pod Security restricted)")
    if sc.get("privileged"):
        err(where, "privileged")
    if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
        err(where, "runAsNonRoot is not set")
    if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
        err(where, "runs as UID 0")
    seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        err(where, "no seccompProfile RuntimeDefault (Pod Security restricted)")
    res = c.get("resources", {})
    # ResourceQuota-friendly: a quota on requests or limits rejects pods that lack them.
    if "limits" not in res or "requests" not in res:
        err(where, "needs resources.requests and resources.limits")
    else:
        for k in ("cpu", "memory"):
            if k not in res["requests"] or k not in res["limits"]:
                err(where, f"resources lack {k} in requests or limits")


def check_restricted_pod(where, spec):
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            err(where, f"{key} (Pod Security restricted)")
    for v in spec.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            err(where, f"volume {v['name']} of type {sorted(kinds)} (Pod Security restricted)")
    if spec.get("automountServiceAccountToken") is not False:
        err(where, "automountServiceAccountToken is not false")


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
            if hardened:
                check_restricted_pod(name, spec)
                for c in inits + mains:
                    check_hardened(f"{name} container {c['name']}", c, spec.get("securityContext", {}))
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
            # First, so the kubelet starts every other container only once it answers.
            if native and inits[0] is not agent:
                err(name, f"the agent is not the first init container: {[c['name'] for c in inits]}")
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
            if "VITALS_GROUP_ROLE" in env_of(agent):
                # SPEC §11: LeaderWorkerSet recreates a whole group when any container of one
                # of its pods restarts (lws pod_utils.go ContainerRestarted), the agent too.
                if "livenessProbe" in agent:
                    err(name, "the agent of a group pod has a liveness probe (SPEC §11)")
                sp = agent.get("startupProbe", {})
                if (sp.get("failureThreshold", 3) - 1) * sp.get("periodSeconds", 10) < 300:
                    err(name, "the agent of a group pod has a startup probe under 5 minutes (SPEC §11)")
                res = agent.get("resources", {})
                if "cpu" in res.get("limits", {}) and res.get("limits") != res.get("requests"):
                    err(name, "the agent of a group pod has a CPU limit (SPEC §11)")
            else:
                check_probe(f"{name} {AGENT}", agent.get("livenessProbe"), "/livez", "liveness")
            if not any(p.get("containerPort") == PORT for p in agent.get("ports", [])):
                err(name, f"agent does not declare containerPort {PORT}")
            args = agent.get("args", [])
            expects = {a.split("=", 1)[1] for a in args if a.startswith("--expect=")}
            expects |= {args[i + 1] for i, a in enumerate(args[:-1]) if a == "--expect"}
            workers = [w.strip() for w in meta.get("annotations", {}).get("vitals.dev/workers", "").split(",") if w.strip()]
            # SPEC §8: a pod may have only upstreams (their probes in the agent's env).
            if not workers and "VITALS_UPSTREAMS" not in env_of(agent):
                err(name, "no vitals.dev/workers annotation and no VITALS_UPSTREAMS")
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
                env = env_of(c)
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
    if seen == 0:
        err(" ".join(paths), "no Vitals pod template found")
    return seen


def split(rendered, core_out, crds_out):
    core, crds = [], []
    for d in load(rendered):
        group = d["apiVersion"].split("/")[0] if "/" in d["apiVersion"] else ""
        (crds if "." in group and not group.endswith(".k8s.io") else core).append(d)
    with open(core_out, "w") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)
    with open(crds_out, "w") as f:
        json.dump(crds, f)
    image_volumes = any("image" in v for d in core if d.get("kind") in POD_KINDS
                        for v in pod_spec(d)[1].get("volumes", []))
    # `image` volumes are in the API from 1.31 (alpha) and usable (beta) from 1.33.
    print("1.33" if image_volumes else "1.29")


def probe_budget(p):
    return p.get("periodSeconds", 10), p.get("failureThreshold", 3), p.get("timeoutSeconds", 1)


def check_timing(where, dep):
    """docs/probes.md: the drain inside the grace period, the worker's liveness
    tolerance above the agent's worst restart, the worker's startup budget."""
    spec = dep["spec"]["template"]["spec"]
    inits = spec.get("initContainers", [])
    agent = next((c for c in inits + spec["containers"] if c["name"] == AGENT), None)
    native = agent in inits
    worker = next(c for c in spec["containers"] if c["name"] != AGENT)
    wenv, aenv = env_of(worker), env_of(agent)
    try:
        delay = seconds(wenv.get("VITALS_DRAIN_DELAY", "5s"))
        drain = seconds(wenv.get("VITALS_DRAIN_TIMEOUT", "30s"))
        agent_grace = seconds(aenv.get("VITALS_SHUTDOWN_GRACE", "5s"))
    except ValueError as e:
        err(where, str(e))
        return
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if native:
        # The worker first (drain delay + drain), then the sidecar (its shutdown grace).
        need = delay + drain + agent_grace + DRAIN_MARGIN
        if grace < need:
            err(where, f"terminationGracePeriodSeconds {grace} < drain delay {delay:g} + drain {drain:g} + agent grace {agent_grace:g} + margin {DRAIN_MARGIN}")
    else:
        # Both get SIGTERM at once: the agent must outlast the worker's drain.
        if agent_grace < delay + drain:
            err(where, f"legacy sidecar: agent grace {agent_grace:g} < drain delay {delay:g} + drain {drain:g}")
        if grace < agent_grace + DRAIN_MARGIN:
            err(where, f"legacy sidecar: terminationGracePeriodSeconds {grace} < agent grace {agent_grace:g} + margin {DRAIN_MARGIN}")
    ap, aft, at = probe_budget(agent["livenessProbe"])
    kill = agent["livenessProbe"].get("terminationGracePeriodSeconds", grace)
    wedge = ap * aft + at + kill + BACKOFF_AFTER_WEDGE + AGENT_START
    crash = CRASH_BACKOFF_COVERED + AGENT_START
    # Three crashes back to back (restart delays 0, 10, 20 s): no probe passes in between.
    three = 3 * AGENT_START + 0 + 10 + 20
    worst = max(wedge, crash, three)
    wp, wft, _ = probe_budget(worker["livenessProbe"])
    # An outage of D seconds fails at most floor(D / period) + 1 probes in a row.
    tolerated = (wft - 1) * wp
    if tolerated <= worst:
        err(where, f"worker liveness tolerates outages under {tolerated} s, the agent's worst restart is {worst:g} s (wedge {wedge:g}, crash {crash})")
    sp, sft, _ = probe_budget(worker["startupProbe"])
    if sp * sft < 30:
        err(where, f"worker startup budget {sp * sft} s < 30 s (process start to hello on a slow node)")
    if dep["spec"].get("minReadySeconds", 0) <= 0:
        err(where, "minReadySeconds is not set")


def check_gpu(where, dep):
    spec = dep["spec"]["template"]["spec"]
    worker = next(c for c in spec["containers"] if c["name"] != AGENT)
    if "nvidia.com/gpu" not in worker.get("resources", {}).get("limits", {}):
        return
    if dep["spec"].get("progressDeadlineSeconds", 600) < 900:
        err(where, "GPU: progressDeadlineSeconds below 900 s, the cold-start arithmetic (pull, fetch, JIT, load)")
    cache = env_of(worker).get("CUDA_CACHE_PATH")
    mounts = {m["mountPath"]: m for m in worker.get("volumeMounts", [])}
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    m = mounts.get(cache)
    if not cache or not m or m.get("readOnly") or "emptyDir" not in vols.get(m["name"], {}):
        err(where, "GPU: CUDA_CACHE_PATH must name a writable emptyDir mount")
    terms = (spec.get("affinity", {}).get("nodeAffinity", {})
             .get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", []))
    if not any(e.get("key") == "nvidia.com/gpu.compute.major" for t in terms for e in t.get("matchExpressions", [])):
        err(where, "GPU: no required node affinity on nvidia.com/gpu.compute.major")


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).get("matchLabels", {}).items())


def policy(rendered, queries_out):
    docs = load(rendered)
    deps = [d for d in docs if d["kind"] == "Deployment"]
    queries = []
    for dep in deps:
        name = f"{rendered}: Deployment/{dep['metadata']['name']}"
        ns = dep["metadata"].get("namespace")
        labels = dep["spec"]["template"]["metadata"].get("labels", {})
        check_timing(name, dep)
        check_gpu(name, dep)
        spread = {c["topologyKey"] for c in dep["spec"]["template"]["spec"].get("topologySpreadConstraints", [])}
        if not {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= spread:
            err(name, f"topology spread over {sorted(spread)}, want hostname and zone")
        for d in docs:
            if d["kind"] not in CLUSTER_SCOPED and d["metadata"].get("namespace") != ns:
                err(name, f"{d['kind']}/{d['metadata']['name']} is in namespace {d['metadata'].get('namespace')!r}, not {ns!r}")
        namespaces = [d for d in docs if d["kind"] == "Namespace" and d["metadata"]["name"] == ns]
        if not namespaces or namespaces[0]["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") != "restricted":
            err(name, f"namespace {ns} is not rendered with pod-security.kubernetes.io/enforce: restricted")
        # Replicas: fixed, or owned by one autoscaler; never 1 with a PDB outside dev.
        scalers = [d for d in docs if d["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")
                   and d["spec"]["scaleTargetRef"].get("name") == dep["metadata"]["name"]]
        if len(scalers) > 1:
            err(name, "more than one autoscaler")
        if scalers:
            if "replicas" in dep["spec"]:
                err(name, "autoscaled, yet spec.replicas is set (each apply would reset the scale)")
            s = scalers[0]["spec"]
            least = s.get("minReplicas", s.get("minReplicaCount", 1))
            behavior = s.get("behavior") or s.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior", {})
            if behavior.get("scaleDown", {}).get("stabilizationWindowSeconds", 0) < 300:
                err(name, "autoscaler scales down with less than a 300 s stabilization window")
        else:
            least = dep["spec"].get("replicas", 1)
        for pdb in (d for d in docs if d["kind"] == "PodDisruptionBudget" and matches(d["spec"].get("selector"), labels)):
            if least < 2 and not ns.endswith("-dev"):
                err(name, f"{least} replica(s) with PodDisruptionBudget {pdb['metadata']['name']}: every node drain is an outage")
            if "minAvailable" in pdb["spec"] and pdb["spec"]["minAvailable"] >= least:
                err(name, "PodDisruptionBudget minAvailable blocks every eviction")
        # NetworkPolicy: selects the pods, names ports they have.
        ports = {p.get("name") for c in dep["spec"]["template"]["spec"].get("initContainers", []) + dep["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        for np in (d for d in docs if d["kind"] == "NetworkPolicy"):
            if not matches(np["spec"]["podSelector"], labels):
                err(name, f"NetworkPolicy {np['metadata']['name']} does not select the pods")
            for rule in np["spec"].get("ingress", []):
                for p in rule.get("ports", []):
                    if isinstance(p.get("port"), str) and p["port"] not in ports:
                        err(name, f"NetworkPolicy names port {p['port']!r}, the pods have {sorted(ports)}")
        for so in (d for d in docs if d["kind"] == "ScaledObject"):
            for i, t in enumerate(so["spec"]["triggers"]):
                q = t.get("metadata", {}).get("query")
                if t["type"] != "prometheus" or not q:
                    continue
                queries.append({"record": f"keda:{so['metadata']['name']}:trigger{i}", "expr": q})
                check_expr_metrics(f"ScaledObject {so['metadata']['name']}", q)
                for n in re.findall(r'namespace="([^"]*)"', q):
                    if n != ns:
                        err(name, f"ScaledObject query counts namespace {n!r}, the Deployment is in {ns!r}")
    if not deps:
        err(rendered, "no Deployment")
    with open(queries_out, "w") as f:
        yaml.safe_dump({"groups": [{"name": "keda-queries", "rules": queries}]}, f, sort_keys=False)


EXPR_NAME = re.compile(r"\b((?:vitals|embedding)_[a-z_]+)")


def worker_metrics():
    """The worker's own metric names, read from model-worker/src/metrics.rs."""
    src = (ROOT / "model-worker/src/metrics.rs").read_text()
    names = set(re.findall(r'"(embedding_[a-z_]+)"', src))
    counters = set(re.findall(r'IntCounter(?:Vec)?::new\(\s*(?:Opts::new\(\s*)?"(embedding_[a-z_]+)"', src))
    return {n + "_total" if n in counters and not n.endswith("_total") else n for n in names}


def agent_metrics():
    """The agent's metric names, read from where it defines them (the sources' counters in
    agent/src/counters.rs, the rest in agent/src/surfaces/metrics.rs), so a new series is
    known without a second list here."""
    src = "".join((ROOT / "agent/src" / f).read_text().split("#[cfg(test)]")[0]
                  for f in ("counters.rs", "surfaces/metrics.rs"))
    names = re.findall(
        r'(?:metric!\(\s*\w+,\s*|HistogramOpts::new\(\s*|opts\(\s*|counter\(\s*|histogram\(\s*)"([a-z_]+)"', src)
    return {"vitals_" + n for n in names}


def check_expr_metrics(where, expr):
    known = agent_metrics() | worker_metrics()
    for m in EXPR_NAME.findall(expr):
        base = re.sub(r"_(bucket|sum|count)$", "", m)
        if m not in known and base not in known:
            err(where, f"unknown metric {m} (registered in neither agent/src/surfaces/metrics.rs nor model-worker/src/metrics.rs)")


def anchors(markdown):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes; a repeated
    heading gets -1, -2, ... (github/cmark-gfm's anchor rule, as rendered on github.com)."""
    out, seen = set(), {}
    for line in prose_lines(markdown):
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line[1])
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def prose_lines(markdown):
    """(line number, line) of every line outside fenced code blocks."""
    fence = None
    for no, line in enumerate(markdown.splitlines(), 1):
        m = re.match(r"\s*(```|~~~)", line)
        if m:
            fence = None if fence == m.group(1) else fence or m.group(1)
            continue
        if fence is None:
            yield no, line


# An inline link or image, `[text](target "title")`, or a reference definition `[x]: target`.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|^[ \t]*\[[^\]]+\]:[ \t]*(\S+)", re.M)


def check_link(where, source, target):
    """A relative link from file `source` resolves: its file exists and its #anchor is a
    heading of the markdown file it names. Returns False (and records why) when not."""
    if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):
        return True  # http(s), mailto: not checked here
    path, _, anchor = target.partition("#")
    dest = (source.parent / path).resolve() if path else source.resolve()
    if not dest.exists():
        err(where, f"link {target}: {rel(dest)} does not exist")
        return False
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
        err(where, f"link {target}: no heading #{anchor} in {rel(dest)}")
        return False
    return True


def rel(path):
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def check_links(paths):
    """Every relative link and #anchor of these markdown files (code spans and fenced blocks
    left out) resolves. Links are found per paragraph: a link's text may wrap."""
    n = 0
    for p in map(Path, paths):
        paragraphs, current = [], []
        for no, line in prose_lines(p.read_text()):
            if line.strip():
                current.append((no, line))
            elif current:
                paragraphs.append(current)
                current = []
        paragraphs += [current] if current else []
        for para in paragraphs:
            text = "\n".join(line for _, line in para)
            # A code span (which may wrap too) becomes blanks, keeping the line breaks.
            text = re.sub(r"`[^`]*`", lambda m: re.sub(r"[^\n]", " ", m.group()), text)
            for m in LINK.finditer(text):
                n += 1
                no = para[0][0] + text.count("\n", 0, m.start(1) if m.group(1) else m.start(2))
                check_link(f"{rel(p)}:{no}", p, m.group(1) or m.group(2))
    if not errors:
        print(f"deploy-check: {n} links in {len(paths)} markdown files resolve, anchors included")


def check_monitoring(rendered, base, rules_out, test_dir, docs_root):
    docs = load(rendered)
    core, rules, monitors = [], [], []
    for d in docs:
        if d["apiVersion"].startswith("monitoring.coreos.com/"):
            (rules if d["kind"] == "PrometheusRule" else monitors).append(d)
        else:
            core.append(d)
    if not rules or not monitors:
        err(rendered, "expected a PrometheusRule and a PodMonitor")
    groups, alerts = [], []
    for r in rules:
        for g in r["spec"]["groups"]:
            groups.append(g)
            for rule in g["rules"]:
                where = f"rule {rule.get('alert') or rule.get('record')}"
                check_expr_metrics(where, rule["expr"])
                if "alert" in rule:
                    alerts.append(rule["alert"])
                    ann = rule.get("annotations", {})
                    if not ann.get("summary") or "Runbook" not in ann.get("description", ""):
                        err(where, "needs a summary and a description with a Runbook")
                    if "severity" not in rule.get("labels", {}):
                        err(where, "no severity label")
                    # Each alert's runbook is its own entry of docs/troubleshooting.md.
                    url = ann.get("runbook_url", "")
                    runbook = f"docs/troubleshooting.md#{rule['alert'].lower()}"
                    if not url.endswith("/" + runbook):
                        err(where, f"runbook_url {url!r} does not end in /{runbook}")
                    else:
                        # As a link from the repository's README.
                        check_link(where, Path(docs_root) / "README.md", runbook)
    with open(rules_out, "w") as f:
        yaml.safe_dump({"groups": groups}, f, sort_keys=False)
    bare = [{**g, "rules": [{k: v for k, v in rule.items() if k != "annotations"} for rule in g["rules"]]} for g in groups]
    with open(Path(test_dir) / "vitals-rules.yaml", "w") as f:
        yaml.safe_dump({"groups": bare}, f, sort_keys=False)
    # Every alert: a test that fires it and one where it must stay quiet.
    fires, quiet, ntests = set(), set(), 0
    for t in Path(test_dir).glob("*.test.yaml"):
        for case in yaml.safe_load(t.read_text()).get("tests", []):
            ntests += 1
            for a in case.get("alert_rule_test", []):
                (fires if a.get("exp_alerts") else quiet).add(a["alertname"])
    for a in alerts:
        if a not in fires:
            err(f"alert {a}", "no promtool unit test that fires it")
        if a not in quiet:
            err(f"alert {a}", "no promtool unit test where it must not fire")
    for a in (fires | quiet) - set(alerts):
        err(f"alert {a}", "tested but not defined")
    print(f"deploy-check: {len(alerts)} alerts, {ntests} promtool unit tests "
          f"({len(fires & set(alerts))} alerts fired, {len(quiet & set(alerts))} kept quiet)", file=sys.stderr)
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
    # The PodMonitor must select the base's pods and name ports they have.
    pods = []
    for d in load(base):
        if d.get("kind") in POD_KINDS:
            meta, spec = pod_spec(d)
            pods.append((d["metadata"].get("namespace"), meta.get("labels", {}), spec))
    for m in monitors:
        sel = m["spec"]["selector"]
        anywhere = m["spec"].get("namespaceSelector", {}).get("any", False)
        hits = [p for p in pods if (anywhere or p[0] == m["metadata"].get("namespace")) and matches(sel, p[1])]
        if not hits:
            err(f"PodMonitor {m['metadata']['name']}", f"selector {sel} matches no base pod in its namespace")
        for ns, labels, spec in hits:
            containers = spec.get("initContainers", []) + spec["containers"]
            ports = {p.get("name") for c in containers for p in c.get("ports", [])}
            ports |= {p.get("containerPort") for c in containers for p in c.get("ports", [])}
            agent_ports = {p.get(k) for c in containers if c["name"] == AGENT for p in c.get("ports", []) for k in ("name", "containerPort")}
            eps = {ep.get("port", ep.get("portNumber")) for ep in m["spec"]["podMetricsEndpoints"]}
            for p in eps - ports:
                err(f"PodMonitor {m['metadata']['name']}", f"port {p!r} is not a port of the pods {sorted(ports)}")
            if not eps & agent_ports:
                err(f"PodMonitor {m['metadata']['name']}", "does not scrape the agent")
            if len(eps) < 2:
                err(f"PodMonitor {m['metadata']['name']}", "does not scrape the worker's own metrics")
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
    elif len(argv) == 5 and argv[1] == "split":
        split(argv[2], argv[3], argv[4])
    elif len(argv) == 4 and argv[1] == "policy":
        policy(argv[2], argv[3])
    elif len(argv) >= 2 and argv[1] == "pods":
        hardened = "--hardened" in argv
        files = [a for a in argv[2:] if a != "--hardened"]
        n = check_pods(files, hardened)
        print(f"deploy-check: {n} Vitals pod templates wired per SPEC §6", file=sys.stderr)
    elif len(argv) == 7 and argv[1] == "monitoring":
        check_monitoring(*argv[2:])
    elif len(argv) >= 3 and argv[1] == "links":
        check_links(argv[2:])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
