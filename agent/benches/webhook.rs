//! `make bench`: what `vitals-agent webhook` (SPEC §10) costs, measured on the real release
//! binary over HTTPS on loopback with a certificate from the bench's own CA:
//!
//! - review latency (client side, request written to answer read) on a kept-alive
//!   connection, one client, `BENCH_REVIEWS` (default 2000) reviews of the vLLM fixture's pod
//!   (an injecting review: patch computed and encoded);
//! - the same with 8 concurrent clients, each on its own connection;
//! - a review on a new connection each time (TCP + TLS handshake + review), 200 of them;
//! - CPU per review: the process's user + system time over the load, divided by reviews;
//! - resident memory: idle after start, and the high-water mark after the load.
//!
//! Results print as a table and go to `bench-results/webhook.json`. Environment:
//! `VITALS_AGENT_BIN` (`make bench`: the static release build; unset,
//! `vitals_e2e::bins::agent_bin`), `BENCH_REVIEWS`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
#[path = "../tests/common/yaml.rs"]
mod yaml;

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde_json::json;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use yaml_rust2::YamlLoader;

use common::{cpu_seconds, env_u64, rss_kib, status_kib, workspace, write_results, Measured};
use vitals_e2e::report::percentile;
use yaml::yaml_to_json;

const CLIENTS: usize = 8;
const NEW_CONNECTIONS: usize = 200;

/// The vLLM fixture's pod template, as the Pod a ReplicaSet would create.
fn review_body() -> Vec<u8> {
    let path = workspace().join("agent/tests/fixtures/inject/vllm-deployment.in.yaml");
    let docs = YamlLoader::load_from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let t = &docs[0]["spec"]["template"];
    let pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": yaml_to_json(&t["metadata"]), "spec": yaml_to_json(&t["spec"])});
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "bench", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "ml", "operation": "CREATE", "object": pod, "dryRun": false}
    }))
    .unwrap()
}

fn client_config(ca: &CertificateDer<'static>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> SendRequest<Full<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let tls = TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// One review; its latency. Panics unless answered 200 with a patch.
async fn review(sender: &mut SendRequest<Full<Bytes>>, body: &[u8]) -> Duration {
    let req = Request::post("/mutate")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .unwrap();
    let t = Instant::now();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let answer = resp.into_body().collect().await.unwrap().to_bytes();
    let elapsed = t.elapsed();
    assert!(
        answer.windows(8).any(|w| w == b"\"patch\":"),
        "an injecting review"
    );
    elapsed
}

/// (user + system CPU seconds, VmRSS KiB, VmHWM KiB) of a process.
fn usage(pid: u32) -> (f64, u64, u64) {
    (cpu_seconds(pid), rss_kib(pid), status_kib(pid, "VmHWM:"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let bin = vitals_e2e::bins::agent_bin();
    let reviews = usize::try_from(env_u64("BENCH_REVIEWS", 2000)).unwrap();

    // The bench's own CA and a serving certificate for localhost.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "bench CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls.key"), key.serialize_pem()).unwrap();

    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let child = Command::new(&bin)
        .args([
            "webhook",
            "--listen",
            &addr.to_string(),
            "--image",
            "vitals-agent:bench",
        ])
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let process = Measured(child);
    let pid = process.0.id();
    let config = client_config(ca.der());
    let body = review_body();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "the webhook did not listen within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let (_, idle_rss, _) = usage(pid);

    // 1. One client, kept-alive connection.
    let (cpu0, _, _) = usage(pid);
    let mut one = rt.block_on(async {
        let mut sender = connect(addr, Arc::clone(&config)).await;
        for _ in 0..50 {
            review(&mut sender, &body).await; // warm-up
        }
        let mut lat = Vec::with_capacity(reviews);
        for _ in 0..reviews {
            lat.push(review(&mut sender, &body).await);
        }
        lat
    });
    let (cpu1, _, _) = usage(pid);
    one.sort();
    let cpu_per_review_us = (cpu1 - cpu0) / (reviews + 50) as f64 * 1e6;

    // 2. Eight clients at once, each on its own connection and thread.
    let per_client = reviews / CLIENTS;
    let started = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (config, body) = (Arc::clone(&config), body.clone());
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async move {
                        let mut sender = connect(addr, config).await;
                        let mut lat = Vec::with_capacity(per_client);
                        for _ in 0..per_client {
                            lat.push(review(&mut sender, &body).await);
                        }
                        lat
                    })
            })
        })
        .collect();
    let mut eight: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let eight_wall = started.elapsed();
    eight.sort();
    let (cpu2, _, _) = usage(pid);
    let cpu_per_review_8_us = (cpu2 - cpu1) / eight.len() as f64 * 1e6;

    // 3. A new TLS connection per review.
    let mut fresh = rt.block_on(async {
        let mut lat = Vec::with_capacity(NEW_CONNECTIONS);
        for _ in 0..NEW_CONNECTIONS {
            let t = Instant::now();
            let mut sender = connect(addr, Arc::clone(&config)).await;
            review(&mut sender, &body).await;
            lat.push(t.elapsed());
        }
        lat
    });
    fresh.sort();
    let (cpu3, rss_after, hwm) = usage(pid);
    let cpu_per_fresh_us = (cpu3 - cpu2) / NEW_CONNECTIONS as f64 * 1e6;
    let binary = std::fs::metadata(&bin).unwrap().len();

    println!(
        "| vitals-agent webhook ({} bytes of AdmissionReview, injecting) | value |",
        body.len()
    );
    println!("| --- | --- |");
    println!(
        "| review latency, 1 client, kept-alive ({reviews}) | p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms |",
        ms(percentile(&one, 0.50)),
        ms(percentile(&one, 0.99)),
        ms(percentile(&one, 1.0))
    );
    println!(
        "| review latency, {CLIENTS} clients at once ({}) | p50 {:.3} ms, p99 {:.3} ms; {:.0} reviews/s |",
        eight.len(),
        ms(percentile(&eight, 0.50)),
        ms(percentile(&eight, 0.99)),
        eight.len() as f64 / eight_wall.as_secs_f64()
    );
    println!(
        "| new TLS connection + review ({NEW_CONNECTIONS}) | p50 {:.3} ms, p99 {:.3} ms |",
        ms(percentile(&fresh, 0.50)),
        ms(percentile(&fresh, 0.99))
    );
    println!(
        "| webhook CPU per review | {cpu_per_review_us:.0} µs (1 client), {cpu_per_review_8_us:.0} µs (8 clients), {cpu_per_fresh_us:.0} µs with a handshake |"
    );
    println!(
        "| RSS | {:.1} MiB idle, {:.1} MiB after the load, {:.1} MiB peak |",
        idle_rss as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "| binary | {binary} bytes ({:.2} MiB) |",
        binary as f64 / 1048576.0
    );

    let results = json!({
        "review_bytes": body.len(),
        "one_client": {"reviews": reviews, "p50_ms": ms(percentile(&one, 0.5)), "p99_ms": ms(percentile(&one, 0.99))},
        "eight_clients": {"reviews": eight.len(), "p50_ms": ms(percentile(&eight, 0.5)), "p99_ms": ms(percentile(&eight, 0.99)),
            "reviews_per_s": eight.len() as f64 / eight_wall.as_secs_f64()},
        "new_connection": {"reviews": NEW_CONNECTIONS, "p50_ms": ms(percentile(&fresh, 0.5)), "p99_ms": ms(percentile(&fresh, 0.99))},
        "cpu_us_per_review": {"one_client": cpu_per_review_us, "eight_clients": cpu_per_review_8_us, "with_handshake": cpu_per_fresh_us},
        "rss_kib": {"idle": idle_rss, "after": rss_after, "peak": hwm},
        "binary_bytes": binary,
    });
    write_results("webhook.json", &results);
}
