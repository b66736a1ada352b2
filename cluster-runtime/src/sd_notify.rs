//! The systemd notification protocol (`sd_notify`), for a node run as a
//! `Type=notify` unit: `READY=1` once the node is ready (the same test as
//! `GET /ready`), `WATCHDOG=1` at half the unit's `WatchdogSec=` while the
//! runtime's event loop is alive, `STOPPING=1` when shutdown begins.
//!
//! Without `NOTIFY_SOCKET` in the environment (not started by systemd)
//! every call here does nothing. The protocol is one datagram per message on
//! a Unix socket, so no library is needed.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: NotifyAddr,
    watchdog: Option<Duration>,
}

#[derive(Debug)]
enum NotifyAddr {
    Path(std::path::PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// The notifier systemd asked for through `NOTIFY_SOCKET` (and
    /// `WATCHDOG_USEC` / `WATCHDOG_PID`), or `None` outside systemd.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let path = path.to_string_lossy().into_owned();
        let addr = match path.strip_prefix('@') {
            Some(name) => NotifyAddr::Abstract(name.as_bytes().to_vec()),
            None => NotifyAddr::Path(path.into()),
        };
        let socket = match UnixDatagram::unbound() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "NOTIFY_SOCKET set but no datagram socket");
                return None;
            }
        };
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && for_us)
            .map(Duration::from_micros);
        Some(Notifier {
            socket,
            addr,
            watchdog,
        })
    }

    /// How often to send `WATCHDOG=1` (half of `WatchdogSec=`), if the
    /// unit has a watchdog.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Sends one notification (`READY=1`, `WATCHDOG=1`, `STATUS=...`).
    /// Failures are logged, never fatal: the node works without systemd.
    pub fn notify(&self, message: &str) {
        let sent = match &self.addr {
            NotifyAddr::Path(path) => self.socket.send_to(message.as_bytes(), path),
            NotifyAddr::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|a| self.socket.send_to_addr(message.as_bytes(), &a))
            }
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, message, "sd_notify failed");
        }
    }
}
