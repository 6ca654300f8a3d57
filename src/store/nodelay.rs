//! `TCP_NODELAY` on the pool's connections to Postgres.
//!
//! sqlx 0.9.0 connects without it (the option was dropped in sqlx PR #4022; the fix,
//! transact-rs/sqlx#4336, is merged but not released as of 0.9.0). With Nagle's algorithm on,
//! a small write that follows a small unacknowledged one waits for the peer's ACK, and Linux
//! delays that ACK up to 40 ms. A batch send's `COPY` is exactly that: the rows' last segment
//! is small, and the `CopyDone` after it waited up to 40 ms (figures in commit 8c15291).
//!
//! sqlx does not hand out its socket, and this crate forbids unsafe code. So after each connect
//! [`set_on_connections_to`] looks through `/proc/self/fd` for the process's TCP sockets whose
//! peer is the database's port, takes a duplicate of each with `pidfd_getfd` (the same socket,
//! owned safely), and sets the option on it. Setting it twice is harmless, so the other pool
//! connections found along the way need no care. The scan costs a few system calls per open
//! descriptor, once per new database connection (a handful per pool lifetime). Remove this once
//! sqlx sets the option itself.

/// Sets `TCP_NODELAY` on every TCP connection of this process whose peer port is `port`;
/// returns how many there are.
#[cfg(target_os = "linux")]
pub fn set_on_connections_to(port: u16) -> std::io::Result<usize> {
    let sockets = linux::connections_to(port)?;
    for socket in &sockets {
        rustix::net::sockopt::set_tcp_nodelay(socket, true)?;
    }
    Ok(sockets.len())
}

/// Whether each TCP connection of this process whose peer port is `port` has `TCP_NODELAY`.
#[cfg(target_os = "linux")]
pub fn nodelay_of_connections_to(port: u16) -> std::io::Result<Vec<bool>> {
    linux::connections_to(port)?
        .iter()
        .map(|socket| rustix::net::sockopt::tcp_nodelay(socket).map_err(Into::into))
        .collect()
}

/// Elsewhere the option stays as sqlx leaves it.
#[cfg(not(target_os = "linux"))]
pub fn set_on_connections_to(_port: u16) -> std::io::Result<usize> {
    Ok(0)
}

#[cfg(target_os = "linux")]
mod linux {
    use std::net::SocketAddr;

    use rustix::fd::OwnedFd;
    use rustix::io::Errno;
    use rustix::net::{SocketType, getpeername, sockopt};
    use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};

    /// Duplicates of this process's TCP sockets connected to `port`.
    pub(super) fn connections_to(port: u16) -> std::io::Result<Vec<OwnedFd>> {
        let me = pidfd_open(getpid(), PidfdFlags::empty())?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc/self/fd")? {
            let Ok(entry) = entry else { continue };
            let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            // Sockets only: their link reads `socket:[inode]`. A descriptor closed meanwhile
            // has no link any more.
            match std::fs::read_link(entry.path()) {
                Ok(target) if target.to_string_lossy().starts_with("socket:") => {}
                _ => continue,
            }
            let socket = match pidfd_getfd(&me, fd, PidfdGetfdFlags::empty()) {
                Ok(socket) => socket,
                // Closed between the listing and now.
                Err(Errno::BADF) => continue,
                Err(err) => return Err(err.into()),
            };
            if sockopt::socket_type(&socket).ok() != Some(SocketType::STREAM) {
                continue;
            }
            let peer = getpeername(&socket)
                .ok()
                .flatten()
                .and_then(|addr| SocketAddr::try_from(addr).ok());
            if peer.is_some_and(|peer| peer.port() == port) {
                found.push(socket);
            }
        }
        Ok(found)
    }
}
