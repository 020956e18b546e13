//! One AdmissionReview, decided: which pods are injected (SPEC §10), the JSON Patch, the
//! warnings. Pure (bytes in, answer out), so the tests and the benchmark call what the
//! server calls.
//!
//! The shape is `admission.k8s.io/v1` as defined in k8s.io/api `admission/v1/types.go`
//! (kubernetes/kubernetes `staging/src/k8s.io/api/admission/v1/types.go`; reference:
//! "kube-apiserver Admission (v1)" in the Kubernetes docs): `AdmissionReview{apiVersion, kind,
//! request, response}`; `AdmissionRequest{uid, kind{group, version, kind}, resource,
//! subResource, name, namespace, operation: CREATE|UPDATE|DELETE|CONNECT, userInfo, object,
//! oldObject, dryRun, options}`; `AdmissionResponse{uid, allowed, result, patch (bytes, so
//! base64 in JSON), patchType: "JSONPatch", auditAnnotations, warnings}`.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::super::pod::inject_pod_object;
use super::super::yaml::Node;
use super::super::{InjectOptions, Problem};
use super::convert;

/// The pod label and annotation that opt a pod in (`"true"`) or out (`"false"`).
pub const INJECT_KEY: &str = "vitals.dev/inject";
/// The AdmissionReview version served.
pub const API_VERSION: &str = "admission.k8s.io/v1";

/// What became of one admission, for `/metrics` and the log. Every variant but
/// [`Outcome::BadRequest`] is an allowed answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A patch that adds or updates the wiring.
    Injected,
    /// The pod already has exactly this wiring: empty patch.
    AlreadyInjected,
    /// The pod opted out (`vitals.dev/inject: "false"`).
    OptedOut,
    /// Not a Pod at CREATE: admitted as is.
    Ignored,
    /// The pod has nothing to watch (no worker named, no probes, not in a group: a front end,
    /// a CronJob's batch pod): admitted unchanged, silently (SPEC §11; a debug log line).
    Skipped,
    /// The pod could not be injected: admitted unchanged, with a warning saying why.
    NotInjected,
    /// Not an AdmissionReview this server can answer: HTTP 400, no review.
    BadRequest,
}

impl Outcome {
    /// The `result` label value.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Injected => "injected",
            Outcome::AlreadyInjected => "already_injected",
            Outcome::OptedOut => "opted_out",
            Outcome::Ignored => "ignored",
            Outcome::Skipped => "skipped",
            Outcome::NotInjected => "not_injected",
            Outcome::BadRequest => "bad_request",
        }
    }

    /// Every label value, for pre-registering the series.
    pub const ALL: [Outcome; 7] = [
        Outcome::Injected,
        Outcome::AlreadyInjected,
        Outcome::OptedOut,
        Outcome::Ignored,
        Outcome::Skipped,
        Outcome::NotInjected,
        Outcome::BadRequest,
    ];
}

/// Why a body is not an AdmissionReview this server answers (HTTP 400 with this message).
#[derive(Debug, thiserror::Error)]
pub enum BadReview {
    /// Not JSON, or JSON of the wrong shape.
    #[error("not an AdmissionReview: {0}")]
    Json(#[from] serde_json::Error),
    /// Another version or kind.
    #[error("expected apiVersion {API_VERSION}, kind AdmissionReview; got {api_version:?}, {kind:?} (set admissionReviewVersions: [v1])")]
    Version {
        /// What the body said.
        api_version: String,
        /// What the body said.
        kind: String,
    },
    /// No `request` (a response, or an empty review).
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    // Read after the version check, so another version gets that message, not a field error.
    request: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: String,
    kind: GroupVersionKind,
    #[serde(default)]
    sub_resource: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    object: Option<Value>,
}

#[derive(Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    kind: String,
}

/// The answer to one review.
#[derive(Debug)]
pub struct Answer {
    /// What became of it.
    pub result: Outcome,
    /// The pod, for the log: `namespace/name`, or `namespace/generateName*`.
    pub pod: String,
    /// The warnings sent back (also worth a log line: for a pod made by a controller, the
    /// warnings go to the controller, not to a person).
    pub warnings: Vec<String>,
    /// Why, for the log only, when the answer says nothing (a skipped pod).
    pub detail: Option<String>,
    /// The response body (an AdmissionReview, or the 400 message).
    pub body: Vec<u8>,
}

/// Decides one AdmissionReview body. Never a denial: anything that can be answered is
/// `allowed: true`, with a patch only when the pod gets injected.
pub fn review(body: &[u8], opts: &InjectOptions) -> Result<Answer, BadReview> {
    let review: Review = serde_json::from_slice(body)?;
    if review.api_version != API_VERSION || review.kind != "AdmissionReview" {
        return Err(BadReview::Version {
            api_version: review.api_version,
            kind: review.kind,
        });
    }
    let request: Request = serde_json::from_value(review.request.ok_or(BadReview::NoRequest)?)?;
    let (result, patch, warnings, detail) = decide(&request, opts);
    let mut response = json!({"uid": request.uid, "allowed": true});
    if let Some(patch) = patch {
        let patch = serde_json::to_vec(&patch).expect("a JSON value always serializes");
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
    }
    if !warnings.is_empty() {
        response["warnings"] = json!(warnings);
    }
    let answer =
        json!({"apiVersion": API_VERSION, "kind": "AdmissionReview", "response": response});
    Ok(Answer {
        result,
        pod: pod_name(&request),
        warnings,
        detail,
        body: serde_json::to_vec(&answer).expect("a JSON value always serializes"),
    })
}

/// The outcome, the patch, the warnings, and a detail for the log.
type Decision = (Outcome, Option<Vec<Value>>, Vec<String>, Option<String>);

fn decide(request: &Request, opts: &InjectOptions) -> Decision {
    let gvk = &request.kind;
    if (gvk.group.as_str(), gvk.kind.as_str()) != ("", "Pod") || !request.sub_resource.is_empty() {
        let what = format!(
            "{}/{} {}{}",
            gvk.group,
            gvk.version,
            gvk.kind,
            if request.sub_resource.is_empty() {
                String::new()
            } else {
                format!(" ({})", request.sub_resource)
            }
        );
        let warning = format!("vitals: only Pods are injected; {what} admitted unchanged");
        return (Outcome::Ignored, None, vec![warning], None);
    }
    if request.operation != "CREATE" {
        // Kubernetes forbids most pod spec changes after creation: nothing to do, nothing to say.
        return (Outcome::Ignored, None, Vec::new(), None);
    }
    // `dryRun` needs nothing: the answer has no side effects either way.
    let Some(object) = request.object.as_ref() else {
        let warning = "vitals: not injected: the request has no Pod object".to_string();
        return (Outcome::NotInjected, None, vec![warning], None);
    };
    let Some(fields) = object.as_object() else {
        let warning = "vitals: not injected: the request's object is not a JSON object".to_string();
        return (Outcome::NotInjected, None, vec![warning], None);
    };
    if opted_out(object) {
        return (Outcome::OptedOut, None, Vec::new(), None);
    }
    let mut pod = convert::object_to_tree(fields);
    match inject_pod_object(&mut pod, opts) {
        // Nothing to watch is no failure (a CronJob's every run would warn its Job
        // controller otherwise): said only in the debug log.
        Err(problem @ Problem::NoWorkerChosen { .. }) => (
            Outcome::Skipped,
            None,
            Vec::new(),
            Some(problem.to_string()),
        ),
        Err(problem) => (
            Outcome::NotInjected,
            None,
            vec![format!("vitals: not injected: {problem}")],
            None,
        ),
        Ok(notes) => {
            let injected = convert::to_json(&Node::Map(pod));
            let patch = convert::diff(object, &injected);
            let mut warnings: Vec<String> = notes.iter().map(|n| format!("vitals: {n}")).collect();
            if opts.legacy_sidecar && restart_policy(object) != "Always" && !patch.is_empty() {
                warnings.push(
                    "vitals: the agent runs as an ordinary container (--legacy-sidecar) and never exits, so this pod never completes".into(),
                );
            }
            if patch.is_empty() {
                (Outcome::AlreadyInjected, None, warnings, None)
            } else {
                (Outcome::Injected, Some(patch), warnings, None)
            }
        }
    }
}

/// `vitals.dev/inject: "false"` as an annotation or a label. The opt-in (namespace label, pod
/// label `"true"`) is the MutatingWebhookConfiguration's selectors: a pod reaches this
/// handler only when it is opted in, and without API permissions the handler cannot read its
/// namespace's labels anyway.
fn opted_out(pod: &Value) -> bool {
    let meta = &pod["metadata"];
    ["annotations", "labels"]
        .iter()
        .any(|field| meta[field][INJECT_KEY].as_str() == Some("false"))
}

fn pod_name(request: &Request) -> String {
    let meta = request.object.as_ref().map(|o| &o["metadata"]);
    let name = match meta.map(|m| (m["name"].as_str(), m["generateName"].as_str())) {
        Some((Some(name), _)) if !name.is_empty() => name.to_string(),
        Some((_, Some(prefix))) => format!("{prefix}*"),
        _ => "?".to_string(),
    };
    format!("{}/{name}", request.namespace)
}

fn restart_policy(pod: &Value) -> &str {
    pod["spec"]["restartPolicy"].as_str().unwrap_or("Always")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review_of(request: Value) -> Value {
        json!({"apiVersion": API_VERSION, "kind": "AdmissionReview", "request": request})
    }

    fn answer(body: &Value) -> (Outcome, Value) {
        let a = review(
            &serde_json::to_vec(body).expect("json"),
            &InjectOptions::default(),
        )
        .expect("answerable");
        (a.result, serde_json::from_slice(&a.body).expect("json"))
    }

    fn pod_request(op: &str, pod: Value) -> Value {
        json!({"uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "ml", "operation": op, "object": pod, "dryRun": false})
    }

    fn worker_pod(annotations: Value) -> Value {
        json!({"metadata": {"annotations": annotations},
            "spec": {"containers": [{"name": "embed", "image": "w:1"}]}})
    }

    #[test]
    fn a_worker_pod_is_patched_and_allowed() {
        let (result, out) = answer(&review_of(pod_request(
            "CREATE",
            worker_pod(json!({"vitals.dev/workers": "embed"})),
        )));
        assert_eq!(result, Outcome::Injected);
        assert_eq!(out["response"]["uid"], "u-1");
        assert_eq!(out["response"]["allowed"], true);
        assert_eq!(out["response"]["patchType"], "JSONPatch");
        assert!(out["response"]["patch"].is_string());
    }

    #[test]
    fn opted_out_pods_and_other_operations_get_no_patch() {
        for (req, want) in [
            (
                pod_request(
                    "CREATE",
                    worker_pod(json!({"vitals.dev/workers": "embed", INJECT_KEY: "false"})),
                ),
                Outcome::OptedOut,
            ),
            (
                pod_request("UPDATE", worker_pod(json!({"vitals.dev/workers": "embed"}))),
                Outcome::Ignored,
            ),
        ] {
            let (result, out) = answer(&review_of(req));
            assert_eq!(result, want);
            assert_eq!(out["response"]["allowed"], true);
            assert!(out["response"].get("patch").is_none(), "{out}");
        }
    }

    #[test]
    fn a_pod_that_cannot_be_injected_is_allowed_with_a_warning() {
        let (result, out) = answer(&review_of(pod_request(
            "CREATE",
            worker_pod(json!({"vitals.dev/workers": "missing"})),
        )));
        assert_eq!(result, Outcome::NotInjected);
        assert_eq!(out["response"]["allowed"], true);
        assert!(out["response"].get("patch").is_none());
        let warning = out["response"]["warnings"][0].as_str().expect("a warning");
        assert!(
            warning.contains("no container named \"missing\""),
            "{warning}"
        );
    }

    #[test]
    fn other_kinds_are_allowed_unchanged_with_a_warning() {
        let mut req = pod_request("CREATE", json!({}));
        req["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
        let (result, out) = answer(&review_of(req));
        assert_eq!(result, Outcome::Ignored);
        assert!(out["response"]["warnings"][0]
            .as_str()
            .is_some_and(|w| w.contains("apps/v1 Deployment")));
    }

    #[test]
    fn unanswerable_bodies_are_errors_not_panics() {
        let opts = InjectOptions::default();
        for body in [
            &b"{"[..],
            b"[]",
            b"null",
            br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#,
            br#"{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}}"#,
            br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"kind": {}}}"#,
        ] {
            assert!(review(body, &opts).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }
}
