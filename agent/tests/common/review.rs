//! AdmissionReviews as the API server sends them and the webhook's answers read back, its
//! JSON Patch applied by the `json-patch` crate (not the code that made it): shared by the
//! webhook tests over HTTPS and the tests that call `review` in process.

use base64::Engine as _;
use hyper::StatusCode;
use serde_json::{json, Value};
use vitals_agent::inject::webhook::{review, Outcome};
use vitals_agent::inject::InjectOptions;

/// A Pod CREATE review as the API server sends it (admission.k8s.io/v1).
pub fn pod_review(uid: &str, pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "",
            "namespace": "ml",
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "3c6f0f7e-5a43-4e1b-9a0e-6a1f2f6e2b11",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
            },
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

/// The response's (allowed, patch operations, warnings), checking the envelope.
pub fn response_of(
    uid: &str,
    status: StatusCode,
    body: &[u8],
) -> (bool, Option<Value>, Vec<String>) {
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(body));
    let review: Value = serde_json::from_slice(body).expect("the answer is JSON");
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    let r = &review["response"];
    assert_eq!(r["uid"], uid, "the response names the request's uid");
    let patch = r.get("patch").map(|p| {
        assert_eq!(r["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(p.as_str().expect("patch is a base64 string"))
            .expect("patch is base64");
        serde_json::from_slice(&bytes).expect("patch is JSON")
    });
    let warnings = r["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| w.as_str().expect("warning is a string").to_string())
        .collect();
    (r["allowed"] == true, patch, warnings)
}

/// `pod` with `patch` applied by the json-patch crate.
pub fn apply(pod: &Value, patch: &Value) -> Value {
    let ops: json_patch::Patch = serde_json::from_value(patch.clone()).expect("RFC 6902 patch");
    let mut out = pod.clone();
    json_patch::patch(&mut out, &ops).expect("the patch applies");
    out
}

/// One pod through the webhook's review, in-process.
#[derive(Debug)]
pub struct Admitted {
    /// What the webhook counted.
    pub outcome: Outcome,
    /// The JSON Patch, when there is one.
    pub patch: Option<Value>,
    /// The warnings sent back.
    pub warnings: Vec<String>,
    /// The pod with the patch applied (the pod itself without one).
    pub pod: Value,
}

/// Sends `pod` through `review` as the API server would and reads the answer back.
pub fn admit(pod: &Value, opts: &InjectOptions) -> Admitted {
    let body = serde_json::to_vec(&pod_review("u", pod)).expect("json");
    let answer = review(&body, opts).expect("an answerable review");
    let (allowed, patch, warnings) = response_of("u", StatusCode::OK, &answer.body);
    assert!(allowed, "never a denial");
    let pod = patch
        .as_ref()
        .map_or_else(|| pod.clone(), |p| apply(pod, p));
    Admitted {
        outcome: answer.result,
        patch,
        warnings,
        pod,
    }
}
