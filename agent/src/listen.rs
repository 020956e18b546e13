//! The agent's listening TCP sockets, made one way for its two servers (`run`'s probe port
//! and `webhook`'s HTTPS port): dual-stack where the address asks for it, the largest accept
//! queue, answers never held back by Nagle. What is served on them is theirs.

use std::net::SocketAddr;

/// Binds `addr` for a server of the agent's (the probe port, the webhook), with the kernel's
/// largest accept queue (`SOMAXCONN`): a burst of reconnecting clients must not overflow it
/// and leave a kubelet's SYN (or the API server's) unanswered.
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
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
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
    listen(&fd, Backlog::MAXCONN)?;
    Ok(std::net::TcpListener::from(fd))
}
