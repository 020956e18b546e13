//! The agent's listening TCP sockets, made one way for its two servers (`run`'s probe port
//! and `webhook`'s HTTPS port): dual-stack where the address asks for it, the largest accept
//! queue, a connection handed over once its first bytes are in, answers never held back by
//! Nagle. What is served on them is theirs.

use std::net::SocketAddr;

/// How long the kernel holds a connection that has sent nothing before the agent accepts
/// it anyway (`TCP_DEFER_ACCEPT`, rounded by the kernel to its SYN-ACK retransmissions:
/// the first is at 1 s). Then the connection is the agent's like any other, under the
/// header timeout.
const DEFER_ACCEPT_SECS: nix::libc::c_int = 1;

/// Binds `addr` for a server of the agent's (the probe port, the webhook), non-blocking for
/// the runtime to watch, with the kernel's largest accept queue (`SOMAXCONN`): a burst of
/// reconnecting clients must not overflow it and leave a kubelet's SYN (or the API
/// server's) unanswered.
///
/// A connection is accepted once its first bytes arrived (`TCP_DEFER_ACCEPT`, as nginx's
/// `listen … deferred` and HAProxy's `defer-accept`): a kubelet's probe is then whole at
/// accept and answered in the accept loop, without a task (measured with a Python client
/// probing as the kubelet does: without it, two probes in three arrived after the accept
/// and took hyper's path, at 40 % more CPU per probe). A connection that sends nothing is
/// held by the kernel for about a second (`DEFER_ACCEPT_SECS`), then accepted like any
/// other. A kernel that refuses the option (a sandbox's) is logged, not fatal.
///
/// Accepted connections inherit `TCP_NODELAY` from it (Linux copies the listener's socket
/// options into each connection it accepts): answers are sent at once without a
/// `setsockopt` per connection.
///
/// An unspecified IPv6 address (`[::]`, the default) listens dual-stack: `IPV6_V6ONLY` is
/// turned off explicitly, whatever the node's `net.ipv6.bindv6only`, so the kubelet reaches
/// it on an IPv6 pod IP and on IPv4 alike (issue 21 item 4). Where the kernel has IPv6
/// disabled, it falls back to `0.0.0.0` on the same port, with a log line.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    match bind_socket(addr) {
        Err(e)
            if addr.is_ipv6()
                && addr.ip().is_unspecified()
                && e.raw_os_error() == Some(nix::libc::EAFNOSUPPORT) =>
        {
            let v4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, addr.port()));
            tracing::warn!(asked = %addr, listening = %v4, "IPv6 is disabled in this kernel; listening on IPv4 only");
            bind_socket(v4)
        }
        other => other,
    }
}

fn bind_socket(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use nix::sys::socket::{
        bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
        SockaddrIn, SockaddrIn6,
    };
    use std::os::fd::AsRawFd;
    let family = if addr.is_ipv6() {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    // Non-blocking from the start: both servers hand it to the runtime to watch.
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    // As std's TcpListener::bind does: a restarted agent rebinds at once.
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    match addr {
        SocketAddr::V6(v6) => {
            if v6.ip().is_unspecified() {
                setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
            }
            bind(fd.as_raw_fd(), &SockaddrIn6::from(v6))?;
        }
        SocketAddr::V4(v4) => bind(fd.as_raw_fd(), &SockaddrIn::from(v4))?,
    }
    // Inherited by every accepted connection: a kept-alive client (a scraper) gets each
    // answer without waiting for Nagle, and no connection needs a setsockopt of its own.
    setsockopt(&fd, sockopt::TcpNoDelay, &true)?;
    // An optimisation, not a need: where a sandboxed kernel refuses it, every answer is
    // the same, only more of them come through hyper.
    if let Err(e) = defer_accept(&fd, DEFER_ACCEPT_SECS) {
        tracing::warn!(error = %e, "TCP_DEFER_ACCEPT refused; probes are served without it");
    }
    listen(&fd, Backlog::MAXCONN)?;
    Ok(std::net::TcpListener::from(fd))
}

/// Sets `TCP_DEFER_ACCEPT` on `fd`. Neither nix (0.29 to 0.32) nor socket2 wraps it, and
/// std's setter is unstable (rust-lang/rust#119639).
#[allow(unsafe_code)]
fn defer_accept(fd: &std::os::fd::OwnedFd, secs: nix::libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `fd` is an open socket owned for the call's duration; the value pointer is
    // to a live `c_int` and the length is that of a `c_int`, as tcp(7) specifies.
    let rc = unsafe {
        nix::libc::setsockopt(
            fd.as_raw_fd(),
            nix::libc::IPPROTO_TCP,
            nix::libc::TCP_DEFER_ACCEPT,
            std::ptr::from_ref(&secs).cast(),
            std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::time::{Duration, Instant};

    /// The fast path's premise: a client's request is in when its connection is accepted;
    /// one that has sent nothing is not handed over yet. The kernel hands a silent one over
    /// after about a second, so an attempt slower than `GRACE` (a loaded machine) proves
    /// nothing and is made again.
    #[test]
    fn a_connection_is_accepted_with_its_request_in() {
        const GRACE: Duration = Duration::from_millis(800);
        const REQUEST: &[u8] = b"GET /livez HTTP/1.1\r\n\r\n";
        for _ in 0..3 {
            let listener = bind("127.0.0.1:0".parse().expect("an address")).expect("bind");
            let addr = listener.local_addr().expect("bound");
            let _silent = std::net::TcpStream::connect(addr).expect("connect");
            let started = Instant::now();
            let mut probe = std::net::TcpStream::connect(addr).expect("connect");
            probe.write_all(REQUEST).expect("send");
            let (accepted, peer) = loop {
                match listener.accept() {
                    Ok(accepted) => break accepted,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        assert!(started.elapsed() < GRACE * 5, "nothing accepted");
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            };
            let next = listener.accept().map(|_| ()).map_err(|e| e.kind());
            if started.elapsed() >= GRACE {
                continue;
            }
            assert_eq!(
                Some(peer),
                probe.local_addr().ok(),
                "the probe's connection accepted first, not the older silent one"
            );
            let mut first = [0u8; 64];
            let n = nix::sys::socket::recv(
                std::os::fd::AsRawFd::as_raw_fd(&accepted),
                &mut first,
                nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            )
            .expect("the request is already in");
            assert_eq!(&first[..n], REQUEST);
            assert_eq!(
                next,
                Err(std::io::ErrorKind::WouldBlock),
                "the silent connection is still the kernel's"
            );
            return;
        }
        panic!("three attempts each took over {GRACE:?}: too loaded a machine to tell");
    }
}
