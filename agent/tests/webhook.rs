//! `vitals-agent webhook` (SPEC §10) over real HTTPS on loopback, verified against the test's
//! own CA: for every pod template of inject's fixtures (tests/fixtures/inject/*.in.yaml), an
//! AdmissionReview shaped as the API server sends it (k8s.io/api admission/v1 types.go:
//! request.uid, kind {group, version, kind}, resource, namespace, operation, userInfo,
//! object, oldObject, dryRun, options) gets a JSON Patch that, applied by the `json-patch`
//! crate (not the code that made it), gives exactly `vitals-agent inject`'s output for that
//! pod; certificate rotation, concurrency, and requests that must not crash or hang it.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::fixtures::{fixture_dir, inject_args};
use common::review::{apply, pod_review, response_of};
use common::yaml::yaml_to_json;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt as _;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use vitals_agent::inject::webhook::{serve, CertStore, Settings, MAX_BODY};
use vitals_agent::inject::{inject_documents, InjectOptions, VERSION};
use vitals_e2e::wait::until;
use yaml_rust2::{Yaml, YamlLoader};

// ---------------------------------------------------------------- certificates

/// The test's own CA and a way to issue server certificates for `localhost`.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-sign CA");
        Ca { cert, key }
    }

    fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// A server certificate and key (PEM) for `localhost` and 127.0.0.1.
    fn issue(&self, common_name: &str) -> (String, String, CertificateDer<'static>) {
        let key = KeyPair::generate().expect("generate key");
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign");
        (cert.pem(), key.serialize_pem(), cert.der().clone())
    }
}

/// Writes a certificate pair the way a Secret volume update lands: each file replaced
/// whole (write then rename), never seen half-written.
fn write_pair(dir: &Path, cert: &str, key: &str) -> (PathBuf, PathBuf) {
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    for (path, text) in [(&key_path, key), (&cert_path, cert)] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write pem");
        std::fs::rename(&tmp, path).expect("rename pem");
    }
    (cert_path, key_path)
}

// ---------------------------------------------------------------- server and client

struct Server {
    addr: SocketAddr,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(settings: Settings, cert: &Path, key: &Path) -> Self {
        let certs = CertStore::load(cert, key).expect("the test's certificate loads");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local addr");
        let stop = CancellationToken::new();
        let token = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("server runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                serve(settings, certs, listener, token).await;
            });
        });
        Server {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn settings(options: InjectOptions) -> Settings {
    Settings {
        options,
        tls_reload_interval: Duration::from_secs(5),
        read_timeout: Duration::from_secs(10),
        max_connections: 64,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime")
}

/// One HTTPS connection that trusts only `ca`; returns the sender and the certificate the
/// server presented.
async fn connect(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
) -> Result<(SendRequest<Full<Bytes>>, CertificateDer<'static>), String> {
    let stream = tls_stream(addr, ca).await?;
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no peer certificate")?
        .clone()
        .into_owned();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("http handshake: {e}"))?;
    tokio::spawn(conn);
    Ok((sender, peer))
}

async fn tls_stream(
    addr: SocketAddr,
    ca: &CertificateDer<'static>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).map_err(|e| format!("root: {e}"))?;
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::try_from("localhost").expect("valid name");
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))
}

async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(StatusCode, Bytes), String> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request parts");
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((status, body))
}

// ---------------------------------------------------------------- inject's fixtures

/// Every `*.in.yaml`: (name, text, flags from its first line `# inject-args: ...`).
fn fixtures() -> Vec<(String, String, Vec<String>)> {
    let out = common::fixtures::fixtures();
    assert!(out.len() >= 14, "inject's fixtures are missing: {out:?}");
    out
}

/// Every pod template of a document (List items included), as a Pod's JSON metadata + spec.
fn pod_templates(y: &Yaml) -> Vec<Value> {
    common::fixtures::pod_templates(y)
        .into_iter()
        .map(|(_, t)| {
            let mut pod = serde_json::Map::new();
            for field in ["metadata", "spec"] {
                if !t[field].is_badvalue() {
                    pod.insert(field.to_string(), yaml_to_json(&t[field]));
                }
            }
            Value::Object(pod)
        })
        .collect()
}

fn templates_of(text: &str) -> Vec<Value> {
    YamlLoader::load_from_str(text)
        .expect("YAML parses")
        .iter()
        .flat_map(pod_templates)
        .collect()
}

/// The webhook has no `--container`: a pod names its workers in `vitals.dev/workers`. The
/// fixture's `--container` names become that annotation (in container order, with the
/// names it had), as `inject` itself writes it.
fn as_admitted_pod(template: &Value, flag_workers: &[String]) -> Value {
    let mut pod = template.clone();
    let previous: Vec<String> = pod["metadata"]["annotations"]["vitals.dev/workers"]
        .as_str()
        .map(|a| a.split(',').map(|s| s.trim().to_string()).collect())
        .unwrap_or_default();
    let workers: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .filter(|n| flag_workers.iter().any(|w| w == n) || previous.iter().any(|w| w == n))
        .map(str::to_string)
        .collect();
    if !workers.is_empty() && workers != previous {
        let meta = pod
            .as_object_mut()
            .expect("a pod is an object")
            .entry("metadata")
            .or_insert_with(|| json!({}));
        if !meta["annotations"].is_object() {
            meta["annotations"] = json!({});
        }
        meta["annotations"]["vitals.dev/workers"] = json!(workers.join(","));
    }
    pod["apiVersion"] = json!("v1");
    pod["kind"] = json!("Pod");
    pod
}

fn without_type(mut pod: Value) -> Value {
    let o = pod.as_object_mut().expect("a pod is an object");
    o.remove("apiVersion");
    o.remove("kind");
    pod
}

#[test]
fn every_fixture_pod_patched_by_the_webhook_equals_inject_output() {
    let ca = Ca::new("fixtures CA");
    let (cert, key, _) = ca.issue("webhook");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_path, key_path) = write_pair(dir.path(), &cert, &key);
    let rt = runtime();
    let mut pods_checked = 0;
    let mut patched = 0;
    for (name, text, flags) in fixtures() {
        // A LeaderWorkerSet's templates are not its pods: LWS's controllers and pod webhook
        // add what the group wiring reads; tests/lws.rs builds those pods (the toolkit's
        // `lws`) and compares there.
        if name == "lws-vllm" {
            continue;
        }
        // The webhook always injects the image of its --image flag; the CLI gets the same.
        let parsed = inject_args(&flags);
        let image = parsed
            .image
            .clone()
            .unwrap_or_else(|| format!("vitals-agent:{VERSION}"));
        let cli_options = InjectOptions {
            image: Some(image.clone()),
            ..parsed.options()
        };
        let webhook_options = InjectOptions {
            containers: Vec::new(),
            legacy_sidecar: parsed.legacy_sidecar,
            image: Some(image),
            ..InjectOptions::default()
        };
        let expected_out = inject_documents(&text, &cli_options)
            .unwrap_or_else(|e| panic!("{name}: inject failed: {e}"));
        let inputs = templates_of(&text);
        let outputs = templates_of(&expected_out);
        assert_eq!(
            inputs.len(),
            outputs.len(),
            "{name}: pod templates in and out"
        );
        assert!(!inputs.is_empty(), "{name}: no pod template");
        let server = Server::start(settings(webhook_options), &cert_path, &key_path);
        rt.block_on(async {
            let (mut sender, _) = connect(server.addr, &ca.der()).await.expect("connect");
            for (i, (input, expected)) in inputs.iter().zip(&outputs).enumerate() {
                let pod = as_admitted_pod(input, &parsed.options().containers);
                let uid = format!("{name}-{i}");
                let body = serde_json::to_vec(&pod_review(&uid, &pod)).expect("json");
                let (status, answer) = send(&mut sender, "POST", "/mutate", body)
                    .await
                    .expect("review answered");
                let (allowed, patch, warnings) = response_of(&uid, status, &answer);
                assert!(allowed, "{name} pod {i}: never a denial");
                let result = match &patch {
                    Some(p) => {
                        patched += 1;
                        apply(&pod, p)
                    }
                    None => pod.clone(),
                };
                assert_eq!(
                    without_type(result),
                    *expected,
                    "{name} pod {i}: webhook result differs from inject's output; patch {patch:?}, warnings {warnings:?}"
                );
                // Idempotent: the injected pod, reviewed again (reinvocation), gets no patch.
                if patch.is_some() {
                    let again = as_admitted_pod(expected, &[]);
                    let body = serde_json::to_vec(&pod_review("again", &again)).expect("json");
                    let (status, answer) = send(&mut sender, "POST", "/mutate", body)
                        .await
                        .expect("review answered");
                    let (allowed, patch, _) = response_of("again", status, &answer);
                    assert!(allowed && patch.is_none(), "{name} pod {i}: reinvocation patched again: {patch:?}");
                }
                pods_checked += 1;
            }
        });
    }
    assert!(
        pods_checked >= 16 && patched >= 14,
        "{pods_checked} pods, {patched} patched"
    );
}

#[test]
fn a_pod_that_cannot_be_injected_is_warned_about_and_one_with_nothing_to_watch_skipped() {
    let text =
        std::fs::read_to_string(fixture_dir().join("err-no-worker-chosen.yaml")).expect("fixture");
    let pods = templates_of(&text);
    assert!(!pods.is_empty());
    let ca = Ca::new("CA");
    let (cert, key, _) = ca.issue("webhook");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_path, key_path) = write_pair(dir.path(), &cert, &key);
    let server = Server::start(settings(InjectOptions::default()), &cert_path, &key_path);
    let missing_worker = json!({"metadata": {"annotations": {"vitals.dev/workers": "nope"}},
        "spec": {"containers": [{"name": "model", "image": "m:1"}]}});
    let opted_out = json!({"metadata": {"annotations": {"vitals.dev/workers": "model", "vitals.dev/inject": "false"},
        "labels": {"vitals.dev/inject": "true"}},
        "spec": {"containers": [{"name": "model", "image": "m:1"}]}});
    runtime().block_on(async {
        let (mut sender, _) = connect(server.addr, &ca.der()).await.expect("connect");
        for (pod, says) in [
            // Nothing to watch is no failure: no warning to the pod's controller (SPEC §11).
            (as_admitted_pod(&pods[0], &[]), None),
            (missing_worker, Some("no container named \"nope\"")),
        ] {
            let body = serde_json::to_vec(&pod_review("u", &pod)).expect("json");
            let (status, answer) = send(&mut sender, "POST", "/mutate", body)
                .await
                .expect("answer");
            let (allowed, patch, warnings) = response_of("u", status, &answer);
            assert!(allowed && patch.is_none(), "{warnings:?}");
            match says {
                None => assert!(warnings.is_empty(), "{warnings:?}"),
                Some(says) => assert!(
                    warnings
                        .iter()
                        .any(|w| w.starts_with("vitals: not injected") && w.contains(says)),
                    "warning should say {says:?}: {warnings:?}"
                ),
            }
        }
        let (_, metrics) = send(&mut sender, "GET", "/metrics", Vec::new())
            .await
            .expect("metrics");
        let metrics = String::from_utf8_lossy(&metrics);
        for (result, count) in [("skipped", 1.0), ("not_injected", 1.0)] {
            let series = format!("vitals_webhook_admissions_total{{result=\"{result}\"}}");
            assert_eq!(common::metric(&metrics, &series), Some(count), "{series}");
        }
        // The opt-out annotation wins over the opt-in label: no patch, nothing to warn about.
        let body = serde_json::to_vec(&pod_review("o", &opted_out)).expect("json");
        let (status, answer) = send(&mut sender, "POST", "/mutate", body)
            .await
            .expect("answer");
        let (allowed, patch, warnings) = response_of("o", status, &answer);
        assert!(
            allowed && patch.is_none() && warnings.is_empty(),
            "{patch:?} {warnings:?}"
        );
    });
}

#[test]
fn tls_is_verified_and_a_rotated_certificate_is_served_within_10s_without_dropping_connections() {
    let ca = Ca::new("rotation CA");
    let (cert, key, first_der) = ca.issue("first");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_path, key_path) = write_pair(dir.path(), &cert, &key);
    // The default reload interval (5 s), as deployed.
    let server = Server::start(settings(InjectOptions::default()), &cert_path, &key_path);
    let rt = runtime();
    let (mut old_conn, presented) = rt
        .block_on(connect(server.addr, &ca.der()))
        .expect("connect with the test CA");
    assert_eq!(presented, first_der);
    // A client that trusts another CA refuses the server.
    let stranger = Ca::new("another CA");
    let refused = rt.block_on(connect(server.addr, &stranger.der()));
    assert!(
        refused.is_err(),
        "a client trusting another CA must fail the handshake"
    );

    // Rotate: a new CA too, so only the new chain verifies with the new root.
    let new_ca = Ca::new("rotated CA");
    let (cert2, key2, second_der) = new_ca.issue("second");
    write_pair(dir.path(), &cert2, &key2);
    let rotated_at = Instant::now();
    until(
        "a new connection to present the rotated certificate",
        Duration::from_secs(10),
        || {
            let (_, presented) = rt.block_on(connect(server.addr, &new_ca.der()))?;
            if presented == second_der {
                Ok(())
            } else {
                Err("old certificate".to_string())
            }
        },
    );
    eprintln!(
        "rotation seen by a new connection after {:?}",
        rotated_at.elapsed()
    );
    // The connection opened before the rotation still works.
    let (status, body) = rt
        .block_on(send(&mut old_conn, "GET", "/healthz", Vec::new()))
        .expect("the old connection survives the rotation");
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok\n"[..]));
}

#[test]
fn a_mismatched_pair_keeps_the_old_certificate_until_the_new_pair_is_whole() {
    let ca = Ca::new("CA");
    let (cert, key, first_der) = ca.issue("first");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_path, key_path) = write_pair(dir.path(), &cert, &key);
    let mut s = settings(InjectOptions::default());
    s.tls_reload_interval = Duration::from_millis(100);
    let server = Server::start(s, &cert_path, &key_path);
    let rt = runtime();
    // The new certificate lands before its key (two files, two writes): not a usable pair.
    let (cert2, key2, second_der) = ca.issue("second");
    write_pair(dir.path(), &cert2, &key);
    // Time passing is what is checked here: ten reload intervals with the mismatched pair.
    std::thread::sleep(Duration::from_millis(1000));
    let (_, presented) = rt
        .block_on(connect(server.addr, &ca.der()))
        .expect("handshakes still succeed with a mismatched pair on disk");
    assert_eq!(
        presented, first_der,
        "the old pair is kept while the files disagree"
    );
    write_pair(dir.path(), &cert2, &key2);
    until(
        "the whole new pair to be served",
        Duration::from_secs(2),
        || {
            let (_, presented) = rt.block_on(connect(server.addr, &ca.der()))?;
            if presented == second_der {
                Ok(())
            } else {
                Err("old certificate".to_string())
            }
        },
    );
}

#[test]
fn eight_clients_times_forty_reviews_all_answered() {
    const CLIENTS: usize = 8;
    const REVIEWS: usize = 40;
    let ca = Ca::new("load CA");
    let (cert, key, _) = ca.issue("webhook");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_path, key_path) = write_pair(dir.path(), &cert, &key);
    let server = Server::start(settings(InjectOptions::default()), &cert_path, &key_path);
    let text =
        std::fs::read_to_string(fixture_dir().join("vllm-deployment.in.yaml")).expect("fixture");
    let pod = as_admitted_pod(&templates_of(&text)[0], &[]);
    let addr = server.addr;
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (pod, ca) = (pod.clone(), ca.der());
            std::thread::spawn(move || {
                runtime().block_on(async move {
                    let (mut sender, _) = connect(addr, &ca).await?;
                    for r in 0..REVIEWS {
                        let uid = format!("c{c}-r{r}");
                        let body = serde_json::to_vec(&pod_review(&uid, &pod)).expect("json");
                        let (status, answer) = send(&mut sender, "POST", "/mutate", body).await?;
                        let (allowed, patch, _) = response_of(&uid, status, &answer);
                        if !allowed || patch.is_none() {
                            return Err(format!("{uid}: allowed {allowed}, patch {patch:?}"));
                        }
                    }
                    Ok::<_, String>(())
                })
            })
        })
        .collect();
    for c in clients {
        c.join()
            .expect("client thread")
            .expect("every review answered with a patch");
    }
    eprintln!("{} reviews in {:?}", CLIENTS * REVIEWS, started.elapsed());
    let metrics = runtime().block_on(async {
        let (mut sender, _) = connect(addr, &ca.der()).await.expect("connect");
        send(&mut sender, "GET", "/metrics", Vec::new())
            .await
            .expect("metrics")
    });
    let text = String::from_utf8_lossy(&metrics.1).to_string();
    let line = format!(
        "vitals_webhook_admissions_total{{result=\"injected\"}} {}",
        CLIENTS * REVIEWS
    );
    assert!(text.lines().any(|l| l == line), "want {line:?} in\n{text}");
    assert!(text.contains("vitals_webhook_review_duration_seconds_bucket{result=\"injected\""));
}

/// `vitals_webhook_admissions_total{result="bad_request"}` as the server's `/metrics` says
/// now (0 before the first).
async fn bad_requests(addr: SocketAddr, ca: &CertificateDer<'static>) -> u64 {
    let (mut sender, _) = connect(addr, ca).await.expect("connect");
    let (_, body) = send(&mut sender, "GET", "/metrics", Vec::new())
        .await
        .expect("metrics");
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("vitals_webhook_admissions_total{result=\"bad_request\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// What the server sends until it closes (at most 3 s; empty on a reset).
async fn read_answer(
    stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server must answer or close within 3 s");
    String::from_utf8_lossy(&buf).to_string()
}

#[test]
fn bad_requests_get_a_clear_4xx_or_an_allowed_answer_and_the_server_keeps_serving() {
    let ca = Ca::new("CA");
    let (cert, key, _) = ca.issue("webhook");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_path, key_path) = write_pair(dir.path(), &cert, &key);
    let mut s = settings(InjectOptions::default());
    s.read_timeout = Duration::from_secs(1);
    let server = Server::start(s, &cert_path, &key_path);
    let addr = server.addr;
    let rt = runtime();
    rt.block_on(async {
        let mut deployment = pod_review("d", &json!({"spec": {}}));
        deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
        let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
            ("malformed JSON", b"{\"apiVersion\": ".to_vec(), StatusCode::BAD_REQUEST, "not an AdmissionReview"),
            (
                "missing request",
                br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
                StatusCode::BAD_REQUEST,
                "has no request",
            ),
            (
                "v1beta1",
                br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#.to_vec(),
                StatusCode::BAD_REQUEST,
                "expected apiVersion admission.k8s.io/v1",
            ),
        ];
        for (what, body, want, says) in cases {
            // A fresh connection each: a 413 may close the connection before the body is read.
            let (mut sender, _) = connect(addr, &ca.der()).await.expect("connect");
            let (status, answer) = send(&mut sender, "POST", "/mutate", body).await.expect(what);
            let text = String::from_utf8_lossy(&answer);
            assert_eq!(status, want, "{what}: {text}");
            assert!(text.contains(says), "{what}: {text:?} should say {says:?}");
        }
        let (mut sender, _) = connect(addr, &ca.der()).await.expect("connect");
        let body = serde_json::to_vec(&deployment).expect("json");
        let (status, answer) = send(&mut sender, "POST", "/mutate", body).await.expect("non-Pod");
        let (allowed, patch, warnings) = response_of("d", status, &answer);
        assert!(allowed && patch.is_none(), "a non-Pod is admitted unchanged");
        assert!(warnings.iter().any(|w| w.contains("only Pods")), "{warnings:?}");
        for (method, path, want) in [
            ("GET", "/mutate", StatusCode::METHOD_NOT_ALLOWED),
            ("GET", "/nope", StatusCode::NOT_FOUND),
            ("GET", "/healthz", StatusCode::OK),
        ] {
            let (status, _) = send(&mut sender, method, path, Vec::new()).await.expect(path);
            assert_eq!(status, want, "{method} {path}");
        }

        // Oversized, declared: 413 from the head alone (the body is never read).
        let mut big = tls_stream(addr, &ca.der()).await.expect("connect");
        let head = format!(
            "POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        big.write_all(head.as_bytes()).await.expect("write head");
        let answer = read_answer(&mut big).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
        assert!(answer.contains("at most 3145728 bytes"), "{answer:?}");
        // Oversized, chunked (no length announced): read up to the limit, then 413, or the
        // connection reset if the rest of the body was still unread; never a hang, and
        // either way the server refused it (counted as a bad request).
        let refused_before = bad_requests(addr, &ca.der()).await;
        let mut chunked = tls_stream(addr, &ca.der()).await.expect("connect");
        chunked
            .write_all(b"POST /mutate HTTP/1.1\r\nhost: localhost\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .expect("write head");
        let chunk = vec![b' '; 64 * 1024];
        let mut sent = 0;
        while sent <= MAX_BODY {
            let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
            if chunked.write_all(&framed).await.is_err() {
                break; // the server answered and closed: fine
            }
            sent += chunk.len();
        }
        let answer = read_answer(&mut chunked).await;
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 413"), "{answer:?}");
        let deadline = Instant::now() + Duration::from_secs(3);
        while bad_requests(addr, &ca.der()).await == refused_before {
            assert!(
                Instant::now() < deadline,
                "the chunked oversized review was not refused (answer {answer:?})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // A client that stops sending its body gets 408 within the read timeout (1 s here)
        // plus 2 s of slack, and one that sends nothing after the handshake is closed.
        let mut stalled = tls_stream(addr, &ca.der()).await.expect("connect");
        stalled
            .write_all(b"POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-length: 1000\r\n\r\n{\"a\"")
            .await
            .expect("write head");
        let t = Instant::now();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(3), async {
            use tokio::io::AsyncReadExt as _;
            stalled.read_to_end(&mut answer).await
        })
        .await;
        assert!(read.is_ok(), "a stalled body must not hold the connection past 3 s");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "after {:?}: {answer:?}", t.elapsed());

        let mut silent = tls_stream(addr, &ca.der()).await.expect("connect");
        let closed = tokio::time::timeout(Duration::from_secs(3), async {
            use tokio::io::AsyncReadExt as _;
            let mut buf = Vec::new();
            silent.read_to_end(&mut buf).await
        })
        .await;
        assert!(closed.is_ok(), "a silent connection must be closed within 3 s");

        // Still serving after all of it.
        let (mut sender, _) = connect(addr, &ca.der()).await.expect("connect");
        let (status, _) = send(&mut sender, "GET", "/healthz", Vec::new()).await.expect("healthz");
        assert_eq!(status, StatusCode::OK);
    });
}

#[test]
fn the_subcommand_refuses_an_unusable_certificate_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("CA");
    let (cert, key, _) = ca.issue("webhook");
    let (_, other_key, _) = ca.issue("other");
    let (cert_path, key_path) = write_pair(dir.path(), &cert, &other_key);
    let out = common::agent_cmd()
        .args(["webhook", "--listen", "127.0.0.1:0", "--image", "x"])
        .arg("--tls-cert")
        .arg(&cert_path)
        .arg("--tls-key")
        .arg(&key_path)
        .output()
        .expect("run vitals-agent webhook");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("does not fit") && stderr.contains("tls.crt"),
        "{stderr}"
    );

    write_pair(dir.path(), &cert, &key);
    let addr = vitals_e2e::pod::free_addr();
    let mut child = common::agent_cmd()
        .args(["webhook", "--image", "x", "--shutdown-delay", "0s"])
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--tls-cert")
        .arg(&cert_path)
        .arg("--tls-key")
        .arg(&key_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start vitals-agent webhook");
    let rt = runtime();
    until("GET /healthz over HTTPS", Duration::from_secs(10), || {
        rt.block_on(async {
            let (mut sender, _) = connect(addr, &ca.der()).await?;
            send(&mut sender, "GET", "/healthz", Vec::new()).await
        })
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = until("exit after SIGTERM", Duration::from_secs(5), || {
        child
            .try_wait()
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "running".to_string())
    });
    assert!(status.success(), "{status:?}");
}

/// LimitRanges, ResourceQuotas and policy engines validate the injected pod (SPEC §11): the
/// agent's resources and its registry's pull secret come from the webhook's flags, and a pod
/// so injected is left alone the next time.
#[test]
fn the_agents_resources_and_pull_secret_come_from_the_flags() {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: vitals_agent::inject::webhook::WebhookArgs,
    }
    let resources =
        r#"{"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}}"#;
    let cli = Cli::try_parse_from([
        "webhook",
        "--tls-cert=c",
        "--tls-key=k",
        "--image=registry.example/vitals-agent:1",
        "--image-pull-secret=regcred,other",
        &format!("--agent-resources={resources}"),
    ])
    .expect("flags parse");
    let opts = cli.args.settings().options;
    let pod = json!({"metadata": {"annotations": {"vitals.dev/workers": "model"}},
        "spec": {"imagePullSecrets": [{"name": "other"}], "containers": [{"name": "model", "image": "m:1"}]}});
    let first = common::review::admit(&pod, &opts);
    let spec = &first.pod["spec"];
    assert_eq!(
        spec["imagePullSecrets"],
        json!([{"name": "other"}, {"name": "regcred"}])
    );
    let agent = &spec["initContainers"][0];
    assert_eq!(
        agent["resources"],
        serde_json::from_str::<Value>(resources).unwrap()
    );
    let again = common::review::admit(&first.pod, &opts);
    assert!(again.patch.is_none(), "{:?}", again.patch);
    for bad in [r#"{"request": {}}"#, r#"{"limits": {"cpu": 1}}"#, "64Mi"] {
        let parsed = Cli::try_parse_from([
            "webhook",
            "--tls-cert=c",
            "--tls-key=k",
            "--image=i",
            &format!("--agent-resources={bad}"),
        ]);
        assert!(parsed.is_err(), "{bad} accepted");
    }
}
