//! The messages of protocol v1 (SPEC §1) and the rules that decode them (SPEC §7).
//!
//! Decoding is split in two because the rules differ: the first line of a connection must
//! be a valid `hello` ([`decode_hello`]); every later line is a [`WorkerMessage`]
//! ([`decode_message`]), where an unknown or missing `type` is not an error but
//! [`WorkerMessage::Unknown`], so newer workers can talk to older agents.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::name::{NameError, WorkerName};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// A worker's lifecycle phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Reading weights or otherwise preparing; may report `progress`.
    Loading,
    /// Loaded; running warm-up passes.
    Warming,
    /// Serving.
    Ready,
    /// Finishing in-flight work before exit; no new work accepted.
    Draining,
    /// Terminal: the worker cannot recover without a restart.
    Failed,
}

impl Phase {
    /// Every phase, in lifecycle order (for per-phase metrics).
    pub const ALL: [Phase; 5] = [
        Phase::Loading,
        Phase::Warming,
        Phase::Ready,
        Phase::Draining,
        Phase::Failed,
    ];

    /// The wire name (`loading`, `ready`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Loading => "loading",
            Phase::Warming => "warming",
            Phase::Ready => "ready",
            Phase::Draining => "draining",
            Phase::Failed => "failed",
        }
    }

    /// Whether this phase is still getting the worker ready (`loading` or `warming`).
    pub fn is_starting(self) -> bool {
        matches!(self, Phase::Loading | Phase::Warming)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far a `loading`/`warming` phase has got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Units done so far; the load-stall clock restarts whenever this moves.
    pub done: u64,
    /// Units expected in all, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// What is counted (`bytes`, `layers`, ...).
    #[serde(default)]
    pub unit: String,
}

/// `hello`: registers a worker instance; must be the first message of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version; must be [`PROTOCOL_VERSION`].
    pub v: u32,
    /// The worker's name (validated by [`decode_hello`]).
    pub worker: String,
    /// Unique per process start: a new instance of a known name is a restart.
    pub instance: String,
    /// The pid as the worker sees it (the agent trusts SO_PEERCRED instead).
    pub pid: u32,
    /// The worker's software version, for `/status`.
    pub version: String,
    /// How often the worker promises a heartbeat.
    pub heartbeat_ms: u64,
}

/// `phase`: the worker's lifecycle phase changed (or its progress moved).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseReport {
    /// The new phase.
    pub phase: Phase,
    /// Human-readable detail, shown in `/status`.
    #[serde(default)]
    pub detail: String,
    /// Load progress, for `loading`/`warming`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
}

/// `check`: the latest value of one readiness gate of the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// The gate's name (`device`, `tokenizer`, ...).
    pub name: String,
    /// Whether the gate passes.
    pub ok: bool,
    /// Why it fails, or a note when it passes.
    #[serde(default)]
    pub message: String,
}

/// `heartbeat`: the inference loop's counters, sent every `heartbeat_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Heartbeat sequence number of this instance.
    pub seq: u64,
    /// Monotonic count of inference-loop iterations, idle ticks included.
    pub progress: u64,
    /// Work queued, not yet started.
    pub pending: u64,
    /// Work being computed now.
    pub in_flight: u64,
}

/// A message from a worker to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerMessage {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`PhaseReport`].
    Phase(PhaseReport),
    /// See [`CheckReport`].
    Check(CheckReport),
    /// See [`Heartbeat`].
    Heartbeat(Heartbeat),
    /// A message whose `type` is missing or not known to this version: ignored and counted.
    #[serde(skip)]
    Unknown {
        /// The `type` it carried, if any.
        type_name: Option<String>,
    },
}

/// Error codes the agent sends before closing a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not UTF-8, not JSON, not an object, or a known message with bad fields.
    BadFrame,
    /// A line longer than 65536 bytes.
    TooLarge,
    /// The first message is not a valid `hello`, or a second `hello` came.
    BadHello,
    /// Another live connection already holds this worker name.
    NameInUse,
    /// `hello.v` is not a version the agent speaks.
    UnsupportedVersion,
}

impl ErrorCode {
    /// Every code, for pre-registering per-code metrics.
    pub const ALL: [ErrorCode; 5] = [
        ErrorCode::BadFrame,
        ErrorCode::TooLarge,
        ErrorCode::BadHello,
        ErrorCode::NameInUse,
        ErrorCode::UnsupportedVersion,
    ];

    /// The wire name (`bad_frame`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::BadHello => "bad_hello",
            ErrorCode::NameInUse => "name_in_use",
            ErrorCode::UnsupportedVersion => "unsupported_version",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `welcome`: the agent accepted a `hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Protocol version the agent speaks.
    pub v: u32,
    /// The agent's software version.
    pub agent_version: String,
    /// After this long without a heartbeat the agent fails the worker's liveness.
    pub hang_timeout_ms: u64,
}

/// `error`: the agent refuses a connection and closes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
}

/// A message from the agent to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// See [`Welcome`].
    Welcome(Welcome),
    /// See [`ErrorReply`].
    Error(ErrorReply),
}

/// Why a line broke the protocol; each maps to the [`ErrorCode`] sent back.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The line exceeds [`crate::codec::MAX_LINE`] bytes.
    #[error("line longer than {limit} bytes")]
    TooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// The line is not valid UTF-8.
    #[error("line is not valid UTF-8")]
    NotUtf8(#[source] std::str::Utf8Error),
    /// The line is not JSON.
    #[error("line is not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// The line is JSON but not an object.
    #[error("line is JSON but not an object")]
    NotObject,
    /// The first message of a connection is not a `hello`.
    #[error("first message must be hello, got {}", found.as_deref().unwrap_or("no type"))]
    NotHello {
        /// The `type` it carried, if any.
        found: Option<String>,
    },
    /// `hello.v` is not [`PROTOCOL_VERSION`].
    #[error("protocol version {found} is not supported (this agent speaks v{PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// The version the worker asked for (as written).
        found: String,
    },
    /// `hello` names a worker whose name breaks the rules.
    #[error("bad worker name: {0}")]
    BadName(#[source] NameError),
    /// `hello` lacks a field or has one of the wrong type.
    #[error("bad hello: {0}")]
    BadHelloFields(#[source] serde_json::Error),
    /// A second `hello` on a connection that already said hello.
    #[error("hello was already received on this connection")]
    SecondHello,
    /// A known message type with a missing or mistyped field.
    #[error("bad {kind} message: {source}")]
    BadFields {
        /// The message type.
        kind: &'static str,
        /// What serde found wrong.
        #[source]
        source: serde_json::Error,
    },
}

impl ProtocolError {
    /// The code the agent sends back for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProtocolError::TooLarge { .. } => ErrorCode::TooLarge,
            ProtocolError::NotUtf8(_)
            | ProtocolError::NotJson(_)
            | ProtocolError::NotObject
            | ProtocolError::BadFields { .. } => ErrorCode::BadFrame,
            ProtocolError::NotHello { .. }
            | ProtocolError::BadName(_)
            | ProtocolError::BadHelloFields(_)
            | ProtocolError::SecondHello => ErrorCode::BadHello,
            ProtocolError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
        }
    }
}

/// A `hello` whose name has been validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidHello {
    /// The validated name.
    pub name: WorkerName,
    /// The whole message as sent.
    pub hello: Hello,
}

fn parse_object(line: &[u8]) -> Result<Map<String, Value>, ProtocolError> {
    let text = std::str::from_utf8(line).map_err(ProtocolError::NotUtf8)?;
    match serde_json::from_str::<Value>(text).map_err(ProtocolError::NotJson)? {
        Value::Object(map) => Ok(map),
        _ => Err(ProtocolError::NotObject),
    }
}

fn type_of(map: &Map<String, Value>) -> Option<&str> {
    map.get("type").and_then(Value::as_str)
}

/// Decodes the first line of a connection, which must be a valid `hello`.
///
/// Checks run in SPEC §7 order: framing, then `type`, then `v`, then name and fields.
pub fn decode_hello(line: &[u8]) -> Result<ValidHello, ProtocolError> {
    let map = parse_object(line)?;
    if type_of(&map) != Some("hello") {
        return Err(ProtocolError::NotHello {
            found: map
                .get("type")
                .map(|t| t.as_str().map_or_else(|| t.to_string(), str::to_owned)),
        });
    }
    match map.get("v") {
        Some(v) if v.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {}
        Some(v) => {
            return Err(ProtocolError::UnsupportedVersion {
                found: v.to_string(),
            })
        }
        None => {
            return Err(ProtocolError::UnsupportedVersion {
                found: "(missing)".to_owned(),
            })
        }
    }
    let hello: Hello =
        serde_json::from_value(Value::Object(map)).map_err(ProtocolError::BadHelloFields)?;
    let name = WorkerName::parse(hello.worker.clone()).map_err(ProtocolError::BadName)?;
    Ok(ValidHello { name, hello })
}

/// Decodes a line after the `hello`: unknown or missing `type` gives
/// [`WorkerMessage::Unknown`]; a second `hello` is [`ProtocolError::SecondHello`].
pub fn decode_message(line: &[u8]) -> Result<WorkerMessage, ProtocolError> {
    fn fields<T: serde::de::DeserializeOwned>(
        kind: &'static str,
        map: Map<String, Value>,
    ) -> Result<T, ProtocolError> {
        serde_json::from_value(Value::Object(map))
            .map_err(|source| ProtocolError::BadFields { kind, source })
    }
    let map = parse_object(line)?;
    let kind = match map.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        other => {
            return Ok(WorkerMessage::Unknown {
                type_name: other.map(Value::to_string),
            })
        }
    };
    Ok(match kind {
        "hello" => return Err(ProtocolError::SecondHello),
        "phase" => WorkerMessage::Phase(fields("phase", map)?),
        "check" => WorkerMessage::Check(fields("check", map)?),
        "heartbeat" => WorkerMessage::Heartbeat(fields("heartbeat", map)?),
        other => WorkerMessage::Unknown {
            type_name: Some(other.to_owned()),
        },
    })
}

/// Decodes a line from the agent (used by reporters).
pub fn decode_agent_message(line: &[u8]) -> Result<AgentMessage, ProtocolError> {
    let map = parse_object(line)?;
    serde_json::from_value(Value::Object(map)).map_err(|source| ProtocolError::BadFields {
        kind: "agent",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode_line;

    fn hello() -> Hello {
        Hello {
            v: 1,
            worker: "model".into(),
            instance: "i-1".into(),
            pid: 42,
            version: "0.1.0".into(),
            heartbeat_ms: 1000,
        }
    }

    fn strip(line: Vec<u8>) -> Vec<u8> {
        assert_eq!(line.last(), Some(&b'\n'));
        line[..line.len() - 1].to_vec()
    }

    #[test]
    fn every_worker_message_round_trips() {
        let h = WorkerMessage::Hello(hello());
        let WorkerMessage::Hello(back) = &h else {
            unreachable!()
        };
        assert_eq!(
            decode_hello(&strip(encode_line(&h)))
                .expect("valid hello")
                .hello,
            *back
        );
        let later = [
            WorkerMessage::Phase(PhaseReport {
                phase: Phase::Loading,
                detail: "reading weights".into(),
                progress: Some(Progress {
                    done: 10,
                    total: Some(100),
                    unit: "bytes".into(),
                }),
            }),
            WorkerMessage::Phase(PhaseReport {
                phase: Phase::Ready,
                detail: String::new(),
                progress: None,
            }),
            WorkerMessage::Check(CheckReport {
                name: "device".into(),
                ok: false,
                message: "no gpu".into(),
            }),
            WorkerMessage::Heartbeat(Heartbeat {
                seq: 7,
                progress: 99,
                pending: 3,
                in_flight: 1,
            }),
        ];
        for m in later {
            assert_eq!(decode_message(&strip(encode_line(&m))).expect("decodes"), m);
        }
        for phase in Phase::ALL {
            let json = serde_json::to_string(&phase).expect("serialises");
            assert_eq!(json, format!("\"{}\"", phase.as_str()));
        }
    }

    #[test]
    fn every_agent_message_round_trips() {
        let msgs = [AgentMessage::Welcome(Welcome {
            v: 1,
            agent_version: "0.1.0".into(),
            hang_timeout_ms: 10_000,
        })]
        .into_iter()
        .chain(ErrorCode::ALL.map(|code| {
            AgentMessage::Error(ErrorReply {
                code,
                message: "why".into(),
            })
        }));
        for m in msgs {
            assert_eq!(
                decode_agent_message(&strip(encode_line(&m))).expect("decodes"),
                m
            );
        }
        let wire = String::from_utf8(encode_line(&AgentMessage::Error(ErrorReply {
            code: ErrorCode::NameInUse,
            message: "x".into(),
        })))
        .expect("utf8");
        assert_eq!(
            wire,
            "{\"type\":\"error\",\"code\":\"name_in_use\",\"message\":\"x\"}\n"
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let line =
            br#"{"type":"heartbeat","seq":1,"progress":2,"pending":0,"in_flight":0,"gpu_temp":71}"#;
        assert!(matches!(
            decode_message(line),
            Ok(WorkerMessage::Heartbeat(Heartbeat { seq: 1, .. }))
        ));
        let line = br#"{"type":"hello","v":1,"worker":"m","instance":"a","pid":1,"version":"x","heartbeat_ms":5,"extra":[1]}"#;
        assert!(decode_hello(line).is_ok());
    }

    #[test]
    fn unknown_or_missing_type_is_not_an_error() {
        assert_eq!(
            decode_message(br#"{"type":"metrics","x":1}"#).expect("ignored"),
            WorkerMessage::Unknown {
                type_name: Some("metrics".into())
            }
        );
        assert_eq!(
            decode_message(br#"{"seq":1}"#).expect("ignored"),
            WorkerMessage::Unknown { type_name: None }
        );
    }

    #[test]
    fn first_line_failures_are_told_apart() {
        let code = |line: &[u8]| decode_hello(line).map(|_| ()).map_err(|e| e.code());
        assert!(matches!(
            decode_hello(b"\xff\xfe"),
            Err(ProtocolError::NotUtf8(_))
        ));
        assert!(matches!(
            decode_hello(b"garbage"),
            Err(ProtocolError::NotJson(_))
        ));
        assert!(matches!(
            decode_hello(b"[1,2]"),
            Err(ProtocolError::NotObject)
        ));
        assert!(matches!(
            decode_hello(br#"{"type":"heartbeat","seq":1}"#),
            Err(ProtocolError::NotHello { found: Some(t) }) if t == "heartbeat"
        ));
        assert!(matches!(
            decode_hello(br#"{"type":"hello","v":99,"worker":"BAD"}"#),
            Err(ProtocolError::UnsupportedVersion { found }) if found == "99"
        ));
        assert!(matches!(
            decode_hello(br#"{"type":"hello","v":1,"worker":"Bad_Name","instance":"a","pid":1,"version":"x","heartbeat_ms":5}"#),
            Err(ProtocolError::BadName(NameError::BadStart('B')))
        ));
        assert!(matches!(
            decode_hello(br#"{"type":"hello","v":1,"worker":"m"}"#),
            Err(ProtocolError::BadHelloFields(_))
        ));
        assert_eq!(code(b"\xff"), Err(ErrorCode::BadFrame));
        assert_eq!(code(b"nope"), Err(ErrorCode::BadFrame));
        assert_eq!(code(b"7"), Err(ErrorCode::BadFrame));
        assert_eq!(
            code(br#"{"type":"phase","phase":"ready"}"#),
            Err(ErrorCode::BadHello)
        );
        assert_eq!(
            code(br#"{"type":"hello","v":2}"#),
            Err(ErrorCode::UnsupportedVersion)
        );
        assert_eq!(code(br#"{"type":"hello","v":1,"worker":"-x","instance":"a","pid":1,"version":"x","heartbeat_ms":5}"#), Err(ErrorCode::BadHello));
    }

    #[test]
    fn later_line_failures_are_told_apart() {
        assert!(matches!(
            decode_message(br#"{"type":"phase","phase":"sleeping"}"#),
            Err(ProtocolError::BadFields { kind: "phase", .. })
        ));
        assert!(matches!(
            decode_message(br#"{"type":"heartbeat","seq":"one"}"#),
            Err(ProtocolError::BadFields {
                kind: "heartbeat",
                ..
            })
        ));
        assert!(matches!(
            decode_message(br#"{"type":"check","ok":true}"#),
            Err(ProtocolError::BadFields { kind: "check", .. })
        ));
        assert!(matches!(
            decode_message(br#"{"type":"hello","v":1}"#),
            Err(ProtocolError::SecondHello)
        ));
        assert_eq!(
            decode_message(br#"{"type":"hello"}"#)
                .map_err(|e| e.code())
                .err(),
            Some(ErrorCode::BadHello)
        );
        assert_eq!(
            decode_message(b"[]").map_err(|e| e.code()).err(),
            Some(ErrorCode::BadFrame)
        );
    }
}
