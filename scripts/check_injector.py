#!/usr/bin/env python3
"""Structural checks of a rendered deploy/components/injector/<path> (SPEC §10), run by
scripts/check-deploy.sh after kubernetes-validate and the CRD schemas:

  check_injector.py RENDERED.yaml cert-manager|certgen

- the MutatingWebhookConfiguration never blocks a pod and never sees the wrong ones:
  failurePolicy Ignore, sideEffects None, timeoutSeconds <= 5, reinvocationPolicy IfNeeded,
  admission.k8s.io/v1, Pods at CREATE only, calls the rendered Service on /mutate, excludes
  kube-system and its own namespace, opt-in by namespace label or pod label on disjoint
  namespace selectors, opt-out label honoured;
- the Deployment: >= 2 replicas under a PDB, its ServiceAccount has no token and no binding,
  it injects its own image, every pod of the render passes Pod Security `restricted` and the
  hardening checks of scripts/check_deploy.py;
- the certificate path fills the caBundle for the Secret the webhook mounts (cert-manager's
  inject-ca-from names a Certificate of that Secret for the Service's DNS name; certgen's Job
  creates that Secret and patches this configuration).
"""
import sys

import check_deploy as cd

INJECT_KEY = "vitals.dev/inject"


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind):
    found = by_kind(docs, kind)
    if len(found) != 1:
        cd.err(kind, f"want exactly one, found {len(found)}")
        return None
    return found[0]


def expressions(selector):
    return {(e["key"], e["operator"]): e.get("values", []) for e in (selector or {}).get("matchExpressions", [])}


def check_webhooks(mwc, svc, ns):
    port = svc["spec"]["ports"][0]["port"]
    opt_in_ns = opt_in_pod = 0
    for w in mwc["webhooks"]:
        where = f"MutatingWebhookConfiguration {mwc['metadata']['name']} webhook {w['name']}"
        want = {"failurePolicy": "Ignore", "sideEffects": "None", "reinvocationPolicy": "IfNeeded"}
        for k, v in want.items():
            if w.get(k) != v:
                cd.err(where, f"{k} is {w.get(k)!r}, want {v!r}")
        if not 1 <= w.get("timeoutSeconds", 10) <= 5:
            cd.err(where, f"timeoutSeconds {w.get('timeoutSeconds', 10)} (default 10), want <= 5")
        if w.get("admissionReviewVersions") != ["v1"]:
            cd.err(where, "admissionReviewVersions must be [v1] (the webhook answers v1 only)")
        for r in w.get("rules", []):
            if r.get("operations") != ["CREATE"] or r.get("resources") != ["pods"] or r.get("apiGroups") != [""]:
                cd.err(where, f"rule {r} is not Pods at CREATE")
        s = w["clientConfig"].get("service", {})
        if (s.get("name"), s.get("namespace"), s.get("path"), s.get("port", 443)) != (
                svc["metadata"]["name"], ns, "/mutate", port):
            cd.err(where, f"clientConfig.service {s} does not call Service {ns}/{svc['metadata']['name']}:{port}/mutate")
        excluded = expressions(w.get("namespaceSelector")).get(("kubernetes.io/metadata.name", "NotIn"), [])
        for name in ("kube-system", ns):
            if name not in excluded:
                cd.err(where, f"namespaceSelector does not exclude namespace {name}")
        ns_expr = expressions(w.get("namespaceSelector"))
        obj = w.get("objectSelector", {})
        if ns_expr.get((INJECT_KEY, "In")) == ["enabled"]:
            opt_in_ns += 1
            if expressions(obj).get((INJECT_KEY, "NotIn")) != ["false"]:
                cd.err(where, f"objectSelector does not honour the opt-out label {INJECT_KEY}=false")
        elif sorted(ns_expr.get((INJECT_KEY, "NotIn"), [])) == ["disabled", "enabled"] and obj.get("matchLabels", {}).get(INJECT_KEY) == "true":
            # SPEC §11: a namespace labelled disabled vetoes the pod opt-in.
            opt_in_pod += 1
        else:
            cd.err(where, f"neither the namespace opt-in ({INJECT_KEY} In [enabled]) nor the pod opt-in "
                          f"({INJECT_KEY}=true in a namespace NotIn [enabled, disabled], disjoint from it)")
    if (opt_in_ns, opt_in_pod) != (1, 1):
        cd.err("MutatingWebhookConfiguration", f"want one namespace opt-in and one pod opt-in webhook, got {opt_in_ns}, {opt_in_pod}")


def check_workload(docs, dep, svc, pdb):
    where = f"Deployment {dep['metadata']['name']}"
    spec = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"].get("labels", {})
    if dep["spec"].get("replicas", 1) < 2:
        cd.err(where, "fewer than 2 replicas: a drain or a rollout would leave pods un-injected")
    if not cd.matches(pdb["spec"]["selector"], labels) or pdb["spec"].get("minAvailable") != 1:
        cd.err(where, "no PodDisruptionBudget with minAvailable: 1 selects its pods")
    if not cd.matches({"matchLabels": svc["spec"]["selector"]}, labels):
        cd.err(where, f"Service {svc['metadata']['name']} does not select its pods")
    sa_name = spec.get("serviceAccountName")
    sas = [d for d in by_kind(docs, "ServiceAccount") if d["metadata"]["name"] == sa_name]
    if not sas or sas[0].get("automountServiceAccountToken") is not False or spec.get("automountServiceAccountToken") is not False:
        cd.err(where, f"ServiceAccount {sa_name} must exist with automountServiceAccountToken: false")
    for b in by_kind(docs, "RoleBinding") + by_kind(docs, "ClusterRoleBinding"):
        if any(s.get("kind") == "ServiceAccount" and s.get("name") == sa_name for s in b.get("subjects", [])):
            cd.err(where, f"{b['kind']} {b['metadata']['name']} gives the webhook's ServiceAccount API permissions")
    c = next(c for c in spec["containers"] if c["name"] == "webhook")
    # SPEC §11: a bare name (`vitals-agent:dev`) is pulled from Docker Hub, where it is not.
    first = c["image"].split("/")[0]
    if "/" not in c["image"] or not ("." in first or ":" in first or first == "localhost"):
        cd.err(where, f"image {c['image']!r} names no registry (the kubelet would pull it from Docker Hub)")
    if cd.env_of(c).get("VITALS_IMAGE") != c["image"]:
        cd.err(where, f"injects {cd.env_of(c).get('VITALS_IMAGE')!r}, runs {c['image']!r}: the same image expected")
    target = svc["spec"]["ports"][0]["targetPort"]
    if not any(p.get("name") == target or p.get("containerPort") == target for p in c.get("ports", [])):
        cd.err(where, f"the Service's targetPort {target!r} is not a port of the webhook")
    args = dict(a.split("=", 1) for a in c["args"][1:] if a.startswith("--") and "=" in a)
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    secret = None
    for name, path in mounts.items():
        if args.get("--tls-cert", "").startswith(path + "/") and "secret" in vols.get(name, {}):
            secret = vols[name]["secret"]
    if secret is None:
        cd.err(where, "--tls-cert is not in a mounted Secret")
    for d in docs:
        if d["kind"] in cd.POD_KINDS:
            pod_where = f"{d['kind']}/{d['metadata']['name']}"
            _, pspec = cd.pod_spec(d)
            cd.check_restricted_pod(pod_where, pspec)
            for pc in pspec.get("initContainers", []) + pspec["containers"]:
                cd.check_hardened(f"{pod_where} container {pc['name']}", pc, pspec.get("securityContext", {}))
    return secret


def check_cert_manager(docs, mwc, svc, ns, secret):
    ref = mwc["metadata"].get("annotations", {}).get("cert-manager.io/inject-ca-from", "")
    certs = [c for c in by_kind(docs, "Certificate") if f"{c['metadata']['namespace']}/{c['metadata']['name']}" == ref]
    if not certs:
        cd.err("cert-manager", f"cert-manager.io/inject-ca-from {ref!r} names no rendered Certificate")
        return
    cert = certs[0]
    if cert["spec"]["secretName"] != secret["secretName"]:
        cd.err("cert-manager", f"Certificate {ref} writes {cert['spec']['secretName']}, the webhook mounts {secret['secretName']}")
    host = f"{svc['metadata']['name']}.{ns}.svc"
    if host not in cert["spec"].get("dnsNames", []):
        cd.err("cert-manager", f"Certificate {ref} lacks dnsName {host}")
    issuers = {i["metadata"]["name"] for i in by_kind(docs, "Issuer")}
    if cert["spec"]["issuerRef"]["name"] not in issuers:
        cd.err("cert-manager", f"Certificate {ref}: issuer {cert['spec']['issuerRef']['name']} not rendered")
    if secret.get("items"):
        cd.err("cert-manager", "cert-manager's Secret has tls.crt and tls.key: no key mapping expected")


def check_certgen(docs, mwc, svc, ns, secret):
    jobs = by_kind(docs, "Job")
    if len(jobs) != 1:
        cd.err("certgen", f"want one certgen Job, found {len(jobs)}")
        return
    _, spec = cd.pod_spec(jobs[0])
    steps = {c["args"][0]: c["args"] for c in spec.get("initContainers", []) + spec["containers"]}
    create, patch = steps.get("create", []), steps.get("patch", [])
    if not create or not patch or "create" not in {c["args"][0] for c in spec.get("initContainers", [])}:
        cd.err("certgen", "the Job must run `create` (init container) before `patch`")
        return
    if f"--secret-name={secret['secretName']}" not in create + patch:
        cd.err("certgen", f"the Job does not write the Secret the webhook mounts ({secret['secretName']})")
    if f"--webhook-name={mwc['metadata']['name']}" not in patch:
        cd.err("certgen", f"`patch` does not name {mwc['metadata']['name']}")
    hosts = next((a.split("=", 1)[1].split(",") for a in create if a.startswith("--host=")), [])
    if f"{svc['metadata']['name']}.$(POD_NAMESPACE).svc" not in hosts:
        cd.err("certgen", f"`create --host` lacks the Service's name: {hosts}")
    if {i["key"]: i["path"] for i in secret.get("items", [])} != {"cert": "tls.crt", "key": "tls.key"}:
        cd.err("certgen", "the webhook must map the Secret's cert and key to tls.crt and tls.key")


def main(argv):
    if len(argv) != 3 or argv[2] not in ("cert-manager", "certgen"):
        print(__doc__, file=sys.stderr)
        return 2
    docs = cd.load(argv[1])
    mwc, svc = one(docs, "MutatingWebhookConfiguration"), one(docs, "Service")
    dep, pdb = one(docs, "Deployment"), one(docs, "PodDisruptionBudget")
    if None in (mwc, svc, dep, pdb):
        return report()
    ns = svc["metadata"]["namespace"]
    check_webhooks(mwc, svc, ns)
    secret = check_workload(docs, dep, svc, pdb)
    if secret is not None:
        (check_cert_manager if argv[2] == "cert-manager" else check_certgen)(docs, mwc, svc, ns, secret)
    return report()


def report():
    for e in cd.errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if cd.errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
