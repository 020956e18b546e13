//! A fake group member (SPEC §9): a small HTTP server on a loopback port that answers each
//! `GET /group` as the test tells it, switchable while it runs: a member agent's document,
//! or one of the hostile ways a peer can fail (hang, reset, garbage, 10 MB). The one fake
//! member of the agent's group tests and the group bench.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// What the member does with each connection.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Answers this `/group` document.
    Answer(serde_json::Value),
    /// Accepts and never answers (holds the connection for a minute).
    Hang,
    /// Accepts, reads the request, closes with a reset.
    Reset,
    /// Answers 200 with a body that is not JSON.
    Garbage,
    /// Answers 200 with a 10 MB body.
    Huge,
}

/// A member agent that is live, listing container `ray` with process `ray` (`pid:start`).
pub fn live(ray: &str) -> Behaviour {
    Behaviour::Answer(serde_json::json!({
        "live": true, "ready": true, "reason": null, "instances": {"ray": ray}
    }))
}

/// A member agent that is not live, for `reason`, listing nothing.
pub fn not_live(reason: &str) -> Behaviour {
    Behaviour::Answer(serde_json::json!({
        "live": false, "ready": false, "reason": reason, "instances": {}
    }))
}

/// A member agent's address, answering as told; one thread per connection.
#[derive(Debug)]
pub struct FakeMember {
    /// Where it listens.
    pub addr: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
}

impl FakeMember {
    /// Starts answering `initial` on a fresh loopback port.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub fn start(initial: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let behaviour = Arc::new(Mutex::new(initial));
        let shared = Arc::clone(&behaviour);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let b = shared
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                std::thread::spawn(move || serve(conn, &b));
            }
        });
        Self { addr, behaviour }
    }

    /// Answers the next connections with `b`.
    pub fn set(&self, b: Behaviour) {
        *self
            .behaviour
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = b;
    }
}

fn serve(mut conn: TcpStream, b: &Behaviour) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let reply = |conn: &mut TcpStream, body: &[u8]| {
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(head.as_bytes());
        let _ = conn.write_all(body);
    };
    match b {
        Behaviour::Answer(doc) => reply(&mut conn, doc.to_string().as_bytes()),
        Behaviour::Hang => std::thread::sleep(Duration::from_secs(60)),
        Behaviour::Reset => {
            let _ = reset_on_close(&conn);
        }
        Behaviour::Garbage => reply(&mut conn, b"\x00\xffnot json at all"),
        Behaviour::Huge => reply(&mut conn, &vec![b'['; 10 * 1024 * 1024]),
    }
}

/// Closes with RST (SO_LINGER 0) rather than FIN.
fn reset_on_close(conn: &TcpStream) -> nix::Result<()> {
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(conn, nix::sys::socket::sockopt::Linger, &linger)
}
