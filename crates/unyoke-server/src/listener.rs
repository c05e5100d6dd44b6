//! Listening sockets handed over as file descriptors (bound and listening already:
//! the Python side binds, so `server(sock, app)`, inherited and activated sockets all
//! arrive the same way).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The kind of a listening socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// TCP over IPv4 or IPv6.
    Tcp,
    /// A UNIX stream socket.
    Unix,
}

/// A listening socket the engine owns (a duplicate of the caller's descriptor).
#[derive(Debug)]
pub struct Listener {
    pub(crate) fd: OwnedFd,
    pub(crate) kind: ListenerKind,
    /// How to show it in logs, e.g. `http://127.0.0.1:8000`.
    pub display: String,
}

impl Listener {
    /// Duplicates `fd` so that the caller may close its own copy.
    pub fn from_fd(fd: RawFd, kind: ListenerKind, display: String) -> io::Result<Listener> {
        // SAFETY: dup of a descriptor the caller says is open; the result is checked.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `dup` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(dup) };
        Ok(Listener { fd, kind, display })
    }

    pub(crate) fn into_tokio(self) -> io::Result<TokioListener> {
        match self.kind {
            ListenerKind::Tcp => {
                let std = std::net::TcpListener::from(self.fd);
                std.set_nonblocking(true)?;
                Ok(TokioListener::Tcp(tokio::net::TcpListener::from_std(std)?))
            }
            ListenerKind::Unix => {
                let std = std::os::unix::net::UnixListener::from(self.fd);
                std.set_nonblocking(true)?;
                Ok(TokioListener::Unix(tokio::net::UnixListener::from_std(
                    std,
                )?))
            }
        }
    }
}

pub(crate) enum TokioListener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}
