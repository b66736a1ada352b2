//! Fine-grained observation of [`netns`](crate::netns) hosts from the
//! harness: which addresses a host's namespace holds and whether a process
//! is still alive, sampled every millisecond or so without spawning a
//! process per look.
//!
//! - An [`Anchor`] is a `sleep` process parked in a host's namespace:
//!   `/proc/<anchor>/net/fib_trie` is that namespace's routing trie, whose
//!   `/32 host LOCAL` entries are exactly the host's own IPv4 addresses
//!   (the local route goes with the address, in the same netlink call). It
//!   keeps working when the node under test has exited.
//! - [`alive`] says whether a pid still runs (a zombie — killed, not yet
//!   reaped by its parent — counts as dead: it can do nothing more).
//! - A [`Sampler`] calls a probe on its own thread every `interval` and
//!   keeps the `CLOCK_MONOTONIC` time of every change of its value, the
//!   clock the nodes' role events use: a change happened in
//!   `(previous sample, recorded sample]`.

use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use cluster_runtime::clock::monotonic_ns;

use crate::netns::Host;

/// A process parked in a host's namespace, to read the namespace's
/// `/proc/<pid>/net/*` files; killed on drop.
#[derive(Debug)]
pub struct Anchor {
    child: Child,
    fib_trie: PathBuf,
}

impl Anchor {
    /// Parks `sleep infinity` in `host`'s namespace.
    pub fn new(host: &Host) -> io::Result<Anchor> {
        let child = host
            .command("sleep")
            .arg("infinity")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let fib_trie = PathBuf::from(format!("/proc/{}/net/fib_trie", child.id()));
        // `ip netns exec` switches namespace before it execs `sleep`: wait
        // until the pid is the sleep, i.e. inside the namespace.
        let comm = format!("/proc/{}/comm", child.id());
        for _ in 0..500 {
            if std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "sleep") {
                return Ok(Anchor { child, fib_trie });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Err(io::Error::other(format!(
            "anchor in {} did not start",
            host.name()
        )))
    }

    /// Whether the namespace holds `addr` as one of its own addresses.
    pub fn has_addr(&self, addr: Ipv4Addr) -> io::Result<bool> {
        let trie = std::fs::read_to_string(&self.fib_trie)?;
        Ok(fib_has_local(&trie, addr))
    }

    /// A probe for a [`Sampler`]: `has_addr`, `false` when unreadable.
    pub fn addr_probe(&self, addr: Ipv4Addr) -> impl FnMut() -> bool + Send + 'static {
        let path = self.fib_trie.clone();
        move || {
            std::fs::read_to_string(&path)
                .map(|t| fib_has_local(&t, addr))
                .unwrap_or(false)
        }
    }
}

impl Drop for Anchor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a `/proc/net/fib_trie` text has a `/32 host LOCAL` entry for
/// `addr`.
pub fn fib_has_local(trie: &str, addr: Ipv4Addr) -> bool {
    let leaf = format!("|-- {addr}");
    let mut lines = trie.lines();
    while let Some(line) = lines.next() {
        if line.trim() == leaf {
            // The leaf's routes follow, one per line, until the next node.
            for route in lines.by_ref() {
                let route = route.trim();
                if !route.starts_with('/') {
                    break;
                }
                if route.starts_with("/32 host LOCAL") {
                    return true;
                }
            }
        }
    }
    false
}

/// Whether process `pid` exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S ...`: the state follows the last `)`.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// The pids in `host`'s namespace whose program (argv\[0\]) ends with
/// `program`.
pub fn programs_in(host: &Host, program: &str) -> Vec<u32> {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", host.name()])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let argv0 = c.split(|b| *b == 0).next().unwrap_or_default();
                String::from_utf8_lossy(argv0).ends_with(program)
            })
        })
        .filter(|pid| alive(*pid))
        .collect()
}

/// What a [`Sampler`] has seen so far.
#[derive(Debug, Clone)]
pub struct Samples<T> {
    /// `(t_ns, value)` for the first sample and every change after it.
    pub changes: Vec<(u64, T)>,
    /// How many samples were taken.
    pub count: u64,
    /// The longest time between two consecutive samples, in ns (the
    /// resolution actually achieved).
    pub max_gap_ns: u64,
}

impl<T: Clone> Samples<T> {
    /// The time of the first sample at or after `since` whose value
    /// satisfies `pred`, if any — counting the value in force at `since`.
    pub fn first_after(&self, since: u64, pred: impl Fn(&T) -> bool) -> Option<u64> {
        let in_force = self
            .changes
            .iter()
            .take_while(|(t, _)| *t <= since)
            .last()
            .map(|(_, v)| v);
        if in_force.is_some_and(&pred) {
            return Some(since);
        }
        self.changes
            .iter()
            .find(|(t, v)| *t > since && pred(v))
            .map(|(t, _)| *t)
    }
}

/// Calls a probe every `interval` on a thread of its own and records the
/// changes of its value; stopped on drop.
#[derive(Debug)]
pub struct Sampler<T> {
    state: Arc<Mutex<Samples<T>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Clone + PartialEq + Send + 'static> Sampler<T> {
    /// Starts sampling; returns once the first sample is recorded.
    pub fn start(interval: Duration, mut probe: impl FnMut() -> T + Send + 'static) -> Self {
        let state = Arc::new(Mutex::new(Samples {
            changes: Vec::new(),
            count: 0,
            max_gap_ns: 0,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let first = probe();
        let t = monotonic_ns();
        if let Ok(mut s) = state.lock() {
            s.changes.push((t, first.clone()));
            s.count = 1;
        }
        let thread = {
            let state = state.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut last = first;
                let mut last_t = t;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(interval);
                    let v = probe();
                    let t = monotonic_ns();
                    let Ok(mut s) = state.lock() else { return };
                    s.count += 1;
                    s.max_gap_ns = s.max_gap_ns.max(t.saturating_sub(last_t));
                    last_t = t;
                    if v != last {
                        s.changes.push((t, v.clone()));
                        last = v;
                    }
                }
            })
        };
        Sampler {
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// What was seen so far.
    pub fn samples(&self) -> Samples<T> {
        self.state
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Stops sampling and returns everything seen.
    pub fn stop(mut self) -> Samples<T> {
        self.halt();
        self.samples()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<T> Drop for Sampler<T> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRIE: &str = "Main:
  +-- 10.99.0.0/24 3 0 5
     +-- 10.99.0.0/29 2 0 2
        |-- 10.99.0.0
           /24 link UNICAST
        |-- 10.99.0.5
           /32 host LOCAL
     |-- 10.99.0.100
        /32 host LOCAL
     |-- 10.99.0.255
        /32 link BROADCAST
Local:
  +-- 10.99.0.0/24 3 0 5
";

    #[test]
    fn fib_trie_local_addresses() {
        assert!(fib_has_local(TRIE, Ipv4Addr::new(10, 99, 0, 5)));
        assert!(fib_has_local(TRIE, Ipv4Addr::new(10, 99, 0, 100)));
        assert!(!fib_has_local(TRIE, Ipv4Addr::new(10, 99, 0, 255)));
        assert!(!fib_has_local(TRIE, Ipv4Addr::new(10, 99, 0, 0)));
        assert!(!fib_has_local(TRIE, Ipv4Addr::new(10, 99, 0, 10)));
    }

    #[test]
    fn first_after_counts_the_value_in_force() {
        let s = Samples {
            changes: vec![(10, true), (20, false), (30, true)],
            count: 3,
            max_gap_ns: 10,
        };
        assert_eq!(s.first_after(5, |v| !*v), Some(20));
        assert_eq!(s.first_after(25, |v| !*v), Some(25));
        assert_eq!(s.first_after(30, |v| !*v), None);
        assert_eq!(s.first_after(0, |v| *v), Some(10));
    }

    #[test]
    fn own_process_is_alive() {
        assert!(alive(std::process::id()));
        assert!(!alive(u32::MAX));
    }
}
