//! The network-namespace harness itself: hosts reach the gateway and each
//! other, a partition cuts exactly one host off, heal restores it, and
//! nothing is left behind (also after a "crash" that skipped Drop).
//!
//! Privileged (root): `cargo test -p cluster-testing --test netns -- --ignored`.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use cluster_testing::netns::{Host, Lab};

/// Whether `host` can open a TCP connection to `addr` and read the first
/// bytes (nats-server greets with `INFO`). An unreachable peer shows up as
/// the 2 s connect timeout expiring.
fn reaches(host: &Host, addr: SocketAddr) -> bool {
    let script = format!(
        "import socket; s = socket.create_connection(('{}', {}), 2); s.settimeout(2); print(s.recv(4).decode())",
        addr.ip(),
        addr.port()
    );
    let out = host
        .command("python3")
        .args(["-c", &script])
        .output()
        .expect("run python3 in the namespace");
    out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("INFO")
}

fn until(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn namespaces(tag: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&format!("ns-{tag}-")))
        .map(str::to_owned)
        .collect()
}

#[test]
#[ignore = "privileged: run by .ci/run"]
fn partition_cuts_one_host_off_and_heal_restores_it() {
    let lab = Lab::new("tpart", 2).expect("lab");
    let nats = lab.nats_server().expect("nats-server on the gateway");
    let server: SocketAddr = nats
        .url()
        .trim_start_matches("nats://")
        .parse()
        .expect("addr");
    let (h1, h2) = (lab.host(1), lab.host(2));
    assert!(
        h1.ip(&["-o", "-4", "addr", "show", "dev", "eth0"])
            .expect("ip addr")
            .contains(&format!("{}/24", h1.addr())),
        "host 1 has its address"
    );
    until(
        "both hosts reach nats-server on the gateway",
        Duration::from_secs(10),
        || reaches(h1, server) && reaches(h2, server),
    );

    lab.partition(h1).expect("partition");
    assert!(
        !reaches(h1, server),
        "a partitioned host reaches the gateway"
    );
    assert!(reaches(h2, server), "the other host lost the gateway too");
    let link = h1.ip(&["-o", "link", "show", "eth0"]).expect("link");
    assert!(
        link.contains("LOWER_UP"),
        "partition keeps the link up: {link}"
    );

    lab.heal(h1).expect("heal");
    until(
        "the healed host reaches the gateway again",
        Duration::from_secs(10),
        || reaches(h1, server),
    );
}

#[test]
#[ignore = "privileged: run by .ci/run"]
fn drop_removes_everything_and_leftovers_are_cleaned() {
    let lab = Lab::new("tleft", 2).expect("lab");
    let gateway = lab.gateway();
    assert_eq!(namespaces("tleft").len(), 3, "two hosts and the switch");
    // A crashed run never drops its lab.
    std::mem::forget(lab);
    let lab = Lab::new("tleft", 1).expect("a new lab over the leftovers");
    let mut left = namespaces("tleft");
    left.sort();
    assert_eq!(
        left,
        ["ns-tleft-1", "ns-tleft-sw"],
        "the stale host 2 and the old switch are gone, the new lab is there"
    );
    let out = lab.host(1).command("true").status().expect("run in host");
    assert!(out.success());
    drop(lab);
    assert!(
        namespaces("tleft").is_empty(),
        "namespaces left: {:?}",
        namespaces("tleft")
    );
    let addrs = Command::new("ip")
        .args(["-o", "-4", "addr"])
        .output()
        .expect("ip addr");
    assert!(
        !String::from_utf8_lossy(&addrs.stdout).contains(&format!(" {gateway}/")),
        "gateway address {gateway} left in the root namespace"
    );
}
