//! Hosts with their own addresses: network namespaces on a private switch.
//!
//! A [`Lab`] is a small LAN: one "switch" namespace `ns-<tag>-sw` holding a
//! bridge, and `N` host namespaces `ns-<tag>-<i>` (i = 1..=N), each with an
//! `eth0` plugged into the bridge and the address `10.77.<k>.<10+i>/24`.
//! The root namespace (the test process) is plugged in too, as the
//! gateway `10.77.<k>.1`, so a server the test starts on
//! [`Lab::gateway`] (e.g. [`Lab::nats_server`]) is reachable from every
//! host. The bridge lives in its own namespace so the root namespace's
//! firewall (Docker sets `FORWARD` to `DROP` with bridge netfilter on) never
//! sees the hosts' traffic.
//!
//! Guarantees: `k` is unique among live labs on the machine (allocated
//! under a lock file); everything a lab creates is removed on drop, also
//! when the test panics, and leftovers of a crashed earlier run with the
//! same tag are removed when a lab is created. Needs root
//! (`CAP_SYS_ADMIN` + `CAP_NET_ADMIN`) and `ip`/`bridge` from iproute2.
//!
//! [`Lab::partition`] disables the host's switch port (bridge port state
//! *disabled*): the host keeps its link and addresses, like a host behind
//! a failed switch, but no frame passes until [`Lab::heal`].
//!
//! ```no_run
//! use cluster_testing::netns::Lab;
//!
//! let lab = Lab::new("demo", 2)?;
//! let out = lab.host(1).command("ip").args(["addr", "show", "eth0"]).output()?;
//! assert!(out.status.success());
//! lab.partition(lab.host(2))?;
//! lab.heal(lab.host(2))?;
//! # Ok::<(), std::io::Error>(())
//! ```

use std::fs::OpenOptions;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The interface name of every host's link to the switch.
pub const HOST_INTERFACE: &str = "eth0";

/// Serialises subnet allocation between concurrent labs (any process).
const LOCK_FILE: &str = "/tmp/cluster-testing-netns.lock";

/// A set of network-namespace hosts on one private /24; removed on drop.
#[derive(Debug)]
pub struct Lab {
    tag: String,
    subnet: u8,
    switch: String,
    gateway_link: String,
    hosts: Vec<Host>,
}

/// One host: a network namespace with `eth0` on the lab's switch.
#[derive(Debug, Clone)]
pub struct Host {
    index: usize,
    name: String,
    addr: Ipv4Addr,
    switch: String,
    port: String,
}

impl Lab {
    /// Creates `hosts` hosts named `ns-<tag>-1` ... after removing any
    /// leftovers with the same tag. `tag` is 1–6 characters `[a-z0-9]`
    /// and must be unique among the labs that run at the same time (use
    /// one per test).
    pub fn new(tag: &str, hosts: usize) -> io::Result<Lab> {
        let tag_ok = (1..=6).contains(&tag.len())
            && tag
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !tag_ok {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("lab tag `{tag}` must be 1–6 characters of [a-z0-9]"),
            ));
        }
        if hosts == 0 || hosts > 200 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a lab has 1–200 hosts, not {hosts}"),
            ));
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_FILE)?;
        lock.lock()?;
        let gateway_link = format!("cgw-{tag}");
        remove_leftovers(tag, &gateway_link);
        let subnet = free_subnet()?;
        let mut lab = Lab {
            tag: tag.to_owned(),
            subnet,
            switch: format!("ns-{tag}-sw"),
            gateway_link,
            hosts: Vec::new(),
        };
        // On error, `lab` is dropped here and removes what was made.
        lab.build(hosts)?;
        drop(lock);
        Ok(lab)
    }

    fn build(&mut self, hosts: usize) -> io::Result<()> {
        let sw = self.switch.clone();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        // The root namespace's port: the gateway address lives here.
        let gw = self.gateway_link.clone();
        ip(&[
            "link", "add", &gw, "type", "veth", "peer", "name", "gw", "netns", &sw,
        ])?;
        ip(&["-n", &sw, "link", "set", "gw", "master", "br0", "up"])?;
        ip(&["addr", "add", &format!("{}/24", self.gateway()), "dev", &gw])?;
        ip(&["link", "set", &gw, "up"])?;
        for i in 1..=hosts {
            let name = format!("ns-{}-{i}", self.tag);
            let port = format!("p{i}");
            let addr = self.addr(10 + i as u8);
            ip(&["netns", "add", &name])?;
            self.hosts.push(Host {
                index: i,
                name: name.clone(),
                addr,
                switch: sw.clone(),
                port: port.clone(),
            });
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &sw,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                HOST_INTERFACE,
                "netns",
                &name,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            ip(&[
                "-n",
                &name,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                HOST_INTERFACE,
            ])?;
            ip(&["-n", &name, "link", "set", HOST_INTERFACE, "up"])?;
        }
        Ok(())
    }

    /// The hosts, in order (`host(1)` is `hosts()[0]`).
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `i`, counting from 1 like the namespace names. Panics when out
    /// of range (a test bug).
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i - 1]
    }

    /// The root namespace's address on the lab's switch, `10.77.<k>.1`:
    /// bind servers here to reach them from the hosts.
    pub fn gateway(&self) -> Ipv4Addr {
        self.addr(1)
    }

    /// An address in the lab's /24 (`10.77.<k>.<last>`); hosts use 11 and
    /// up, so e.g. `addr(100)` is free for a VIP.
    pub fn addr(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, last)
    }

    /// Cuts `host` off the switch: its port stops forwarding in both
    /// directions while its link stays up.
    pub fn partition(&self, host: &Host) -> io::Result<()> {
        port_state(host, "0")
    }

    /// Undoes [`partition`](Lab::partition).
    pub fn heal(&self, host: &Host) -> io::Result<()> {
        port_state(host, "3")
    }

    /// Starts a JetStream `nats-server` in the root namespace listening on
    /// [`gateway`](Lab::gateway), reachable from the test and every host;
    /// killed on drop. The binary is found like
    /// [`NatsServer`](crate::NatsServer) finds it (`$NATS_SERVER_BIN`, ...).
    pub fn nats_server(&self) -> io::Result<LabNats> {
        LabNats::start(self.gateway())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for host in &self.hosts {
            remove_namespace(&host.name);
        }
        remove_namespace(&self.switch);
        let _ = quiet_ip(&["link", "del", &self.gateway_link]);
    }
}

impl Host {
    /// The position in the lab, from 1.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The namespace name, `ns-<tag>-<i>` (for `ip -n NAME ...`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's own address on `eth0`.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The interface on the lab's switch ([`HOST_INTERFACE`]).
    pub fn interface(&self) -> &str {
        HOST_INTERFACE
    }

    /// A command that runs `program` inside this host's namespace
    /// (`ip netns exec NAME program`); `ip` execs the program, so the
    /// child's pid is the program's. Convert with
    /// `tokio::process::Command::from` for async use.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// `ip -n NAME ARGS...`, returning stdout; fails with stderr in the
    /// message.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }
}

/// A `nats-server` for a [`Lab`], listening on the lab's gateway address.
#[derive(Debug)]
pub struct LabNats {
    child: Child,
    addr: SocketAddr,
    _store: tempfile::TempDir,
}

impl LabNats {
    fn start(host: Ipv4Addr) -> io::Result<LabNats> {
        let binary = cluster_runtime::nats_server::find_binary()
            .map_err(|e| io::Error::new(io::ErrorKind::NotFound, e.to_string()))?;
        let port = TcpListener::bind((host, 0))?.local_addr()?.port();
        let store = tempfile::tempdir()?;
        let child = Command::new(binary)
            .args([
                "-a",
                &host.to_string(),
                "-p",
                &port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut nats = LabNats {
            child,
            addr: SocketAddr::from((host, port)),
            _store: store,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&nats.addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = nats.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "nats-server on {} exited during start-up: {status}",
                    nats.addr
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("nats-server on {} not ready within 10s", nats.addr),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nats)
    }

    /// `nats://10.77.<k>.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }
}

impl Drop for LabNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn port_state(host: &Host, state: &str) -> io::Result<()> {
    let out = Command::new("bridge")
        .args([
            "-n",
            &host.switch,
            "link",
            "set",
            "dev",
            &host.port,
            "state",
            state,
        ])
        .output()?;
    check("bridge", &out).map(|_| ())
}

/// Runs `ip ARGS...`; returns stdout or an error carrying stderr.
fn ip(args: &[&str]) -> io::Result<String> {
    let out = Command::new("ip").args(args).output()?;
    check(&format!("ip {}", args.join(" ")), &out)
}

fn quiet_ip(args: &[&str]) -> io::Result<()> {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|_| ())
}

fn check(what: &str, out: &std::process::Output) -> io::Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "`{what}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Kills whatever still runs in namespace `name`, then deletes it.
fn remove_namespace(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(pid) = pid.parse::<i32>() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
    let _ = quiet_ip(&["netns", "del", name]);
}

/// Removes namespaces `ns-<tag>-*` and the gateway link of a crashed run.
fn remove_leftovers(tag: &str, gateway_link: &str) {
    let prefix = format!("ns-{tag}-");
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            let rest = name.strip_prefix(&prefix).unwrap_or_default();
            if !rest.is_empty() && (rest == "sw" || rest.bytes().all(|b| b.is_ascii_digit())) {
                remove_namespace(name);
            }
        }
    }
    let _ = quiet_ip(&["link", "del", gateway_link]);
}

/// The first `k` in 1..=254 with no `10.77.k.*` address in the root
/// namespace (call under the lock).
fn free_subnet() -> io::Result<u8> {
    let out = ip(&["-o", "-4", "addr", "show"])?;
    (1..=254u8)
        .find(|k| !out.contains(&format!(" 10.77.{k}.")))
        .ok_or_else(|| io::Error::other("no free 10.77.<k>.0/24 subnet for a lab"))
}
