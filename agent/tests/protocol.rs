//! Bad input on the worker socket: each gets its error code, is counted, and leaves
//! every other worker's verdicts exactly as they were.
#![allow(missing_docs, clippy::unwrap_used)]

mod common;

use common::{eventually, hello_line, metric, Agent, Worker};
use std::io::Write;
use vitals_proto::message::AgentMessage;

/// The verdicts of worker `model` as `/status` reports them.
fn verdicts(agent: &Agent) -> serde_json::Value {
    let status = agent.status();
    let w = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "model")
        .cloned()
        .expect("model known");
    serde_json::json!([w["live"], w["ready"], w["startup"], w["connected"]])
}

fn errors(agent: &Agent, code: &str) -> f64 {
    metric(
        &agent.metrics(),
        &format!("vitals_protocol_errors_total{{code=\"{code}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Sends `lines` raw on a new connection and expects `error` `code` then EOF.
fn expect_refused(agent: &Agent, raw: &[u8], code: &str) {
    let before = errors(agent, code);
    let mut w = Worker::connect(&agent.socket);
    // A huge line fills the socket buffer: write from a thread, the agent answers after
    // 65537 bytes and closes, so the rest of the write fails; that is fine.
    let mut writer = w.stream.try_clone().unwrap();
    let raw = raw.to_vec();
    let t = std::thread::spawn(move || {
        let _ = writer.write_all(&raw);
    });
    w.expect_error(code);
    let _ = t.join();
    eventually(&format!("{code} counted"), || {
        (errors(agent, code) == before + 1.0).then_some(())
    });
}

#[test]
fn bad_input_gets_its_code_and_leaves_others_unchanged() {
    let agent = Agent::start(|_| {});
    let mut model = agent.worker("model", "i-1");
    model.phase("ready");
    model.check("device", true, "cpu");
    model.beat(1);
    agent.wait_for("/readyz/model", 200, "ok");
    let before = verdicts(&agent);

    expect_refused(&agent, b"garbage\n", "bad_frame");
    expect_refused(&agent, b"\xff\xfe{}\n", "bad_frame");
    expect_refused(&agent, b"[1,2,3]\n", "bad_frame");
    expect_refused(&agent, &vec![b'x'; 1 << 20], "too_large");
    expect_refused(&agent, b"{\"type\":\"heartbeat\",\"seq\":1}\n", "bad_hello");
    let bad_name = hello_line("Bad_Name", "i");
    expect_refused(&agent, format!("{bad_name}\n").as_bytes(), "bad_hello");
    let v99 = hello_line("other", "i").replace("\"v\":1", "\"v\":99");
    expect_refused(&agent, format!("{v99}\n").as_bytes(), "unsupported_version");
    expect_refused(
        &agent,
        b"{\"type\":\"hello\",\"v\":1,\"worker\":\"x\"}\n",
        "bad_hello",
    );

    // After a good hello: a mistyped known message, and a second hello.
    for (line, code) in [
        (
            r#"{"type":"phase","phase":"sleeping"}"#.to_owned(),
            "bad_frame",
        ),
        (
            r#"{"type":"heartbeat","seq":"one"}"#.to_owned(),
            "bad_frame",
        ),
        (hello_line("late", "i-2"), "bad_hello"),
    ] {
        let before = errors(&agent, code);
        let mut w = agent.worker("late", "i-1");
        w.line(&line);
        w.expect_error(code);
        eventually("counted", || {
            (errors(&agent, code) == before + 1.0).then_some(())
        });
    }

    assert_eq!(verdicts(&agent), before, "model's verdicts unchanged");
    assert_eq!(agent.get("/readyz/model").body, "ok");
    // model's connection still works.
    model.check("device", false, "lost");
    agent.wait_for("/readyz/model", 503, "fail: check: device: lost");
}

#[test]
fn the_line_limit_is_exact() {
    let agent = Agent::start(|_| {});
    let mut w = agent.worker("model", "i-1");
    let base = r#"{"type":"heartbeat","seq":1,"progress":1,"pending":0,"in_flight":0,"pad":""}"#;
    let pad = "p".repeat(65536 - base.len());
    let exactly = base.replace("\"pad\":\"\"", &format!("\"pad\":\"{pad}\""));
    assert_eq!(exactly.len(), 65536);
    w.line(&exactly);
    w.phase("ready");
    agent.wait_for("/readyz/model", 200, "ok");
    let over = exactly.replace("\"pad\":\"", "\"pad\":\"p");
    assert_eq!(over.len(), 65537);
    w.stream.write_all(over.as_bytes()).unwrap();
    w.expect_error("too_large");
    agent.wait_for("/readyz/model", 503, "fail: not_connected");
}

#[test]
fn unknown_types_are_ignored_and_counted() {
    let agent = Agent::start(|_| {});
    let mut w = agent.worker("model", "i-1");
    w.line(r#"{"type":"gpu_stats","temp":71}"#);
    w.line(r#"{"no_type":true}"#);
    w.phase("ready");
    agent.wait_for("/readyz/model", 200, "ok");
    let m = agent.metrics();
    assert_eq!(
        metric(&m, "vitals_protocol_unknown_messages_total"),
        Some(2.0)
    );
    assert_eq!(
        metric(&m, "vitals_protocol_errors_total{code=\"bad_frame\"}"),
        Some(0.0)
    );
}

#[test]
fn two_hundred_connections_at_once_are_all_served() {
    let agent = Agent::start(|_| {});
    let mut model = agent.worker("model", "i-1");
    model.phase("ready");
    agent.wait_for("/readyz/model", 200, "ok");
    let before = verdicts(&agent);
    let socket = agent.socket.clone();
    let threads: Vec<_> = (0..200)
        .map(|i| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut w = Worker::connect(&socket);
                w.line(&hello_line(&format!("w-{i}"), "i"));
                let reply = w.reply();
                (w, reply)
            })
        })
        .collect();
    let mut workers = Vec::new();
    for t in threads {
        let (w, reply) = t.join().unwrap();
        assert!(matches!(reply, Some(AgentMessage::Welcome(_))), "{reply:?}");
        workers.push(w);
    }
    let status = agent.status();
    let connected = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["connected"] == true)
        .count();
    assert_eq!(connected, 201);
    assert_eq!(verdicts(&agent), before);
    drop(workers);
    assert_eq!(agent.get("/readyz/model").body, "ok");
}
