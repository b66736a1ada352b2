//! The virtual IP: an address that follows the active instance.
//!
//! Guarantee: a [`VipManager`] puts the address on the interface only in
//! [`acquire`](VipManager::acquire) and takes it off in
//! [`release`](VipManager::release); the caller (the singleton's failover
//! sequence, DESIGN §4.7) acquires after winning the lease and releases on
//! every demotion — including self-demotion at the lease deadline, which is
//! why `release` is one netlink round trip and never waits on NATS.
//!
//! On acquire the manager tells the LAN where the address now lives with
//! gratuitous ARP: a burst of [`VipConfig::garp_count`] rounds at once,
//! another after [`VipConfig::garp_repeat_after`] (for switches and hosts
//! that missed or rate-limited the first), then one round every
//! [`VipConfig::refresh`] while held. The refresh also puts the address back
//! if something removed it.
//!
//! Privileges: adding and removing addresses needs `CAP_NET_ADMIN`, the
//! `AF_PACKET` socket for ARP needs `CAP_NET_RAW`. [`VipManager::new`]
//! checks both up front so a node without them fails at start-up, not at
//! its first failover.
//!
//! IPv6 addresses are added (without duplicate address detection) and
//! removed, but no unsolicited neighbour advertisement is sent: neighbours
//! learn the new MAC when their cache entry goes stale (NUD probes).
//! Linux only.

mod arp;
mod netlink;

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cluster_spec::ops::Vip;
use nix::errno::Errno;
use pnet_datalink::NetworkInterface;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// How the VIP is announced; build with [`VipConfig::new`] for the
/// defaults (5 rounds, again after 5 s, then every 30 s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipConfig {
    /// The address, prefix and interface (`vip = "CIDR dev IFACE"`).
    pub vip: Vip,
    /// Gratuitous ARP rounds per burst; 0 turns gratuitous ARP off (and
    /// with it the need for `CAP_NET_RAW`).
    pub garp_count: u32,
    /// When the second burst follows the first.
    pub garp_repeat_after: Duration,
    /// Period of the refresh (one round of gratuitous ARP, address check).
    pub refresh: Duration,
}

impl VipConfig {
    /// The defaults for `vip`: 5 rounds, repeated after 5 s, refreshed
    /// every 30 s.
    pub fn new(vip: Vip) -> Self {
        Self {
            vip,
            garp_count: 5,
            garp_repeat_after: Duration::from_secs(5),
            refresh: Duration::from_secs(30),
        }
    }
}

/// Why a VIP operation failed; each message names the VIP and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    /// The configured interface is not there (in this network namespace).
    #[error("interface `{dev}` does not exist (vip {vip})")]
    NoInterface {
        /// The VIP as configured.
        vip: String,
        /// The missing interface.
        dev: String,
    },
    /// The process lacks a capability the operation needs.
    #[error("{action} VIP {vip} needs {capability} ({detail})")]
    Permission {
        /// What was attempted (`adding`, `removing`, `announcing`).
        action: &'static str,
        /// The VIP as configured.
        vip: String,
        /// `CAP_NET_ADMIN` or `CAP_NET_RAW`.
        capability: &'static str,
        /// What the kernel or the capability check said.
        detail: String,
    },
    /// The configuration cannot work.
    #[error("vip {vip}: {reason}")]
    Config {
        /// The VIP as configured.
        vip: String,
        /// What is wrong and what would be right.
        reason: String,
    },
    /// Any other failure of the kernel call.
    #[error("{action} VIP {vip} failed: {source}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// The VIP as configured.
        vip: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
}

/// Adds, announces and removes one VIP.
///
/// ```no_run
/// use cluster_runtime::vip::{VipConfig, VipManager};
/// use cluster_spec::ops::Vip;
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let vip = Vip::parse("192.168.1.100/24 dev eth0")?;
/// let manager = VipManager::new(VipConfig::new(vip))?;
/// manager.acquire().await?; // won the lease
/// assert!(manager.held());
/// manager.release().await?; // demoted
/// # Ok(()) }
/// ```
pub struct VipManager {
    config: Arc<VipConfig>,
    /// The refresh task while held; the lock serialises acquire/release.
    refresh: Mutex<Option<JoinHandle<()>>>,
    held: AtomicBool,
}

impl fmt::Debug for VipManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VipManager")
            .field("vip", &self.config.vip.to_string())
            .field("held", &self.held())
            .finish()
    }
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;

impl VipManager {
    /// Checks the configuration, that the interface exists and that the
    /// process has the capabilities it will need; changes nothing.
    pub fn new(config: VipConfig) -> Result<Self, VipError> {
        let vip = config.vip.to_string();
        if config.refresh.is_zero() {
            return Err(VipError::Config {
                vip,
                reason: "refresh must be longer than zero (default 30s)".into(),
            });
        }
        interface(&config.vip)?;
        check_capability(&config.vip, "adding", "CAP_NET_ADMIN", CAP_NET_ADMIN)?;
        if announces(&config) {
            check_capability(&config.vip, "announcing", "CAP_NET_RAW", CAP_NET_RAW)?;
        }
        Ok(Self {
            config: Arc::new(config),
            refresh: Mutex::new(None),
            held: AtomicBool::new(false),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &VipConfig {
        &self.config
    }

    /// Adds the address, sends the first gratuitous ARP burst and starts
    /// the refresh. Idempotent: an address already on the interface is
    /// taken over, and acquiring while held only re-checks the address.
    /// On failure nothing this call added is left behind.
    pub async fn acquire(&self) -> Result<(), VipError> {
        let mut refresh = self.refresh.lock().await;
        let vip = &self.config.vip;
        let iface = interface(vip)?;
        let added = netlink::add(iface.index, vip.addr, vip.prefix)
            .await
            .map_err(|e| op_error(vip, "adding", e))?;
        if refresh.as_ref().is_some_and(|t| !t.is_finished()) {
            return Ok(());
        }
        let index = iface.index;
        if let Err(e) = announce(&self.config, iface, self.config.garp_count).await {
            if added == netlink::Added::New {
                // Undo our add so a failed acquire leaves nothing behind.
                if let Err(undo) = netlink::del(index, vip.addr, vip.prefix).await {
                    tracing::warn!(vip = %vip, error = %undo, "could not remove the VIP after a failed announce");
                }
            }
            return Err(e);
        }
        let config = Arc::clone(&self.config);
        *refresh = Some(tokio::spawn(refresh_loop(config)));
        self.held.store(true, Ordering::SeqCst);
        tracing::info!(vip = %vip, existing = added == netlink::Added::Existing, "VIP acquired");
        Ok(())
    }

    /// Stops the refresh and removes the address. Fast (one netlink round
    /// trip) and idempotent: an address or interface that is already gone
    /// is success.
    pub async fn release(&self) -> Result<(), VipError> {
        let mut refresh = self.refresh.lock().await;
        if let Some(task) = refresh.take() {
            task.abort();
        }
        self.held.store(false, Ordering::SeqCst);
        let vip = &self.config.vip;
        let index = match interface(vip) {
            Ok(iface) => iface.index,
            // The address went away with the interface.
            Err(VipError::NoInterface { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let removed = netlink::del(index, vip.addr, vip.prefix)
            .await
            .map_err(|e| op_error(vip, "removing", e))?;
        tracing::info!(vip = %vip, removed, "VIP released");
        Ok(())
    }

    /// Whether this manager holds the VIP (acquired, not released since).
    pub fn held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }
}

impl Drop for VipManager {
    /// Stops the refresh. The address stays: removal is async, call
    /// [`VipManager::release`] before dropping.
    fn drop(&mut self) {
        if let Some(task) = self.refresh.get_mut().take() {
            task.abort();
        }
    }
}

/// Whether gratuitous ARP applies (IPv4 and a non-zero burst).
fn announces(config: &VipConfig) -> bool {
    config.vip.addr.is_ipv4() && config.garp_count > 0
}

/// Sends `rounds` of gratuitous ARP for an IPv4 VIP; nothing for IPv6.
async fn announce(
    config: &VipConfig,
    iface: NetworkInterface,
    rounds: u32,
) -> Result<(), VipError> {
    let IpAddr::V4(ip) = config.vip.addr else {
        return Ok(());
    };
    if !announces(config) {
        return Ok(());
    }
    tokio::task::spawn_blocking(move || arp::send_burst(&iface, ip, rounds))
        .await
        .map_err(|e| op_error(&config.vip, "announcing", io::Error::other(e.to_string())))?
        .map_err(|e| op_error(&config.vip, "announcing", e))
}

/// The second burst, then a refresh round every `refresh`; the address is
/// put back if it disappeared. Errors are logged: the lease, not the VIP,
/// decides who is active.
async fn refresh_loop(config: Arc<VipConfig>) {
    tokio::time::sleep(config.garp_repeat_after).await;
    let mut rounds = config.garp_count;
    loop {
        if let Err(e) = refresh_once(&config, rounds).await {
            tracing::warn!(vip = %config.vip, error = %e, "VIP refresh failed");
        }
        rounds = 1;
        tokio::time::sleep(config.refresh).await;
    }
}

async fn refresh_once(config: &VipConfig, rounds: u32) -> Result<(), VipError> {
    let vip = &config.vip;
    let iface = interface(vip)?;
    let added = netlink::add(iface.index, vip.addr, vip.prefix)
        .await
        .map_err(|e| op_error(vip, "adding", e))?;
    if added == netlink::Added::New {
        tracing::warn!(vip = %vip, "the VIP had been removed from its interface; added it again");
    }
    announce(config, iface, rounds).await
}

/// Finds the interface named in `vip` in this network namespace.
fn interface(vip: &Vip) -> Result<NetworkInterface, VipError> {
    pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == vip.dev)
        .ok_or_else(|| VipError::NoInterface {
            vip: vip.to_string(),
            dev: vip.dev.clone(),
        })
}

/// Maps a kernel error to a [`VipError`], naming the capability on
/// `EPERM`/`EACCES`.
fn op_error(vip: &Vip, action: &'static str, e: io::Error) -> VipError {
    let denied = [Errno::EPERM, Errno::EACCES]
        .iter()
        .any(|d| e.raw_os_error() == Some(*d as i32));
    if denied {
        VipError::Permission {
            action,
            vip: vip.to_string(),
            capability: if action == "announcing" {
                "CAP_NET_RAW"
            } else {
                "CAP_NET_ADMIN"
            },
            detail: e.to_string(),
        }
    } else if e.raw_os_error() == Some(Errno::ENODEV as i32) {
        VipError::NoInterface {
            vip: vip.to_string(),
            dev: vip.dev.clone(),
        }
    } else {
        VipError::Io {
            action,
            vip: vip.to_string(),
            source: e,
        }
    }
}

/// Fails with [`VipError::Permission`] when the effective capability set
/// (`CapEff` in `/proc/self/status`) lacks `bit`. An unreadable status
/// file skips the check; the kernel still has the last word.
fn check_capability(
    vip: &Vip,
    action: &'static str,
    name: &'static str,
    bit: u32,
) -> Result<(), VipError> {
    let Some(effective) = effective_caps() else {
        return Ok(());
    };
    if effective & (1u64 << bit) != 0 {
        return Ok(());
    }
    Err(VipError::Permission {
        action,
        vip: vip.to_string(),
        capability: name,
        detail: format!("the process's effective capabilities are {effective:#x}"),
    })
}

fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(s: &str) -> Vip {
        Vip::parse(s).expect("vip")
    }

    #[test]
    fn missing_interface_is_named() {
        let err = VipManager::new(VipConfig::new(vip("10.1.2.3/24 dev nosuch9")))
            .expect_err("no such interface");
        assert_eq!(
            err.to_string(),
            "interface `nosuch9` does not exist (vip 10.1.2.3/24 dev nosuch9)"
        );
    }

    #[test]
    fn zero_refresh_is_rejected() {
        let mut config = VipConfig::new(vip("10.1.2.3/24 dev lo"));
        config.refresh = Duration::ZERO;
        let err = VipManager::new(config).expect_err("zero refresh");
        assert!(err.to_string().contains("refresh"), "{err}");
    }

    #[test]
    fn eperm_names_the_capability() {
        let v = vip("10.1.2.3/24 dev eth0");
        let e = op_error(&v, "adding", io::Error::from_raw_os_error(1));
        assert!(
            e.to_string()
                .starts_with("adding VIP 10.1.2.3/24 dev eth0 needs CAP_NET_ADMIN"),
            "{e}"
        );
        let e = op_error(&v, "announcing", io::Error::from_raw_os_error(1));
        assert!(e.to_string().contains("needs CAP_NET_RAW"), "{e}");
    }
}
