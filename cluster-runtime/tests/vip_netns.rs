//! The VIP on real network namespaces: `cluster-vip-tool` (a thin CLI over
//! [`cluster_runtime::vip::VipManager`]) runs inside lab hosts; a client in
//! another host connects to a server bound at the VIP and learns the VIP's
//! MAC from gratuitous ARP when the VIP moves.
//!
//! Privileged (root): `cargo test -p cluster-runtime --test vip_netns -- --ignored`.
//! The tool is built from the cluster-testing package on first use
//! (`CLUSTER_VIP_TOOL` overrides its path).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cluster_testing::netns::{Host, Lab};
use cluster_testing::process::ChildProcess;

const WAIT: Duration = Duration::from_secs(20);

/// The `cluster-vip-tool` binary, built once per test run.
fn tool() -> PathBuf {
    static TOOL: OnceLock<PathBuf> = OnceLock::new();
    TOOL.get_or_init(|| {
        if let Some(p) = std::env::var_os("CLUSTER_VIP_TOOL") {
            return PathBuf::from(p);
        }
        // target/<profile>/deps/vip_netns-HASH → target/<profile>
        let exe = std::env::current_exe().expect("test exe");
        let profile_dir = exe.parent().and_then(|d| d.parent()).expect("profile dir");
        let target_dir = profile_dir.parent().expect("target dir");
        let mut build = Command::new(env!("CARGO"));
        build
            .args([
                "build",
                "-p",
                "cluster-testing",
                "--bin",
                "cluster-vip-tool",
            ])
            .arg("--target-dir")
            .arg(target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building cluster-vip-tool failed");
        profile_dir.join("cluster-vip-tool")
    })
    .clone()
}

fn vip_tool(host: &Host, args: &[&str]) -> Output {
    let mut c = host.command(tool());
    c.args(args);
    c.output().expect("run cluster-vip-tool")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `host`'s addresses on eth0, one per line (`ip -o addr`).
fn addrs(host: &Host) -> String {
    host.ip(&["-o", "addr", "show", "dev", "eth0"])
        .expect("ip addr")
}

fn has_addr(host: &Host, cidr: &str) -> bool {
    addrs(host).contains(&format!(" {cidr} "))
}

fn mac(host: &Host) -> String {
    let link = host.ip(&["-o", "link", "show", "eth0"]).expect("ip link");
    link.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .expect("a MAC on eth0")
        .to_owned()
}

/// The MAC `client`'s neighbour cache holds for `ip`, if any.
fn neighbour(client: &Host, ip: &str) -> Option<String> {
    let out = client
        .ip(&["neigh", "show", ip, "dev", "eth0"])
        .expect("ip neigh");
    out.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .map(str::to_owned)
}

/// `GET http://ip:port/who` from `client`; the body, or `None` if the
/// server cannot be reached (2 s timeout).
fn who(client: &Host, ip: &str, port: u16) -> Option<String> {
    let out = client
        .command("curl")
        .args(["-s", "--max-time", "2", &format!("http://{ip}:{port}/who")])
        .output()
        .expect("run curl");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An HTTP server inside `host`, bound at `ip:port`, serving `/who` =
/// the host's name.
fn web_server(host: &Host, ip: &str, port: u16) -> (ChildProcess, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("who"), host.name()).expect("write who");
    let mut c = host.command("python3");
    c.args(["-m", "http.server", "--bind", ip, &port.to_string()])
        .current_dir(dir.path());
    (ChildProcess::spawn(&mut c).expect("start http.server"), dir)
}

/// `hold` inside `host`, with the repeat burst far away so that only the
/// first burst can have moved the client's cache.
async fn hold(host: &Host, spec: &str) -> ChildProcess {
    let mut c = host.command(tool());
    c.args([
        "hold",
        spec,
        "--repeat-after-ms",
        "600000",
        "--refresh-ms",
        "600000",
    ]);
    let mut p = ChildProcess::spawn(&mut c).expect("start cluster-vip-tool hold");
    if p.wait_for_line(|l| l == "held", WAIT).await.is_none() {
        p.kill();
        panic!("hold never said held: {}", p.stderr_text());
    }
    p
}

async fn stop(mut holder: ChildProcess) {
    holder.terminate().expect("SIGTERM");
    let status = holder
        .wait_exit(WAIT)
        .await
        .expect("holder exits on SIGTERM");
    assert!(status.success(), "holder failed: {}", holder.stderr_text());
    assert!(holder.lines_seen().iter().any(|l| l == "released"));
}

#[tokio::test]
#[ignore = "privileged: run by .ci/run"]
async fn vip_moves_and_gratuitous_arp_repoints_the_client() {
    let lab = Lab::new("vmove", 3).expect("lab");
    let (h1, h2, client) = (lab.host(1), lab.host(2), lab.host(3));
    let vip = lab.addr(100).to_string();
    let cidr = format!("{vip}/24");
    let spec = format!("{cidr} dev eth0");
    let port = 8080;

    // Host 1 holds the VIP and serves on it.
    let holder = hold(h1, &spec).await;
    assert!(has_addr(h1, &cidr), "VIP on host 1: {}", addrs(h1));
    assert!(!has_addr(h2, &cidr));
    let (web1, _d1) = web_server(h1, &vip, port);
    until("the client reaches host 1 through the VIP", || {
        who(client, &vip, port).as_deref() == Some(h1.name())
    });
    assert_eq!(
        neighbour(client, &vip),
        Some(mac(h1)),
        "client cache → host 1"
    );

    // Move: host 1 releases, host 2 acquires.
    stop(holder).await;
    drop(web1);
    assert!(!has_addr(h1, &cidr), "released VIP still on host 1");
    let holder = hold(h2, &spec).await;
    assert!(has_addr(h2, &cidr), "VIP on host 2: {}", addrs(h2));

    // Without the client sending anything, only the gratuitous ARP can
    // change its cache entry to host 2's MAC.
    let mac2 = mac(h2);
    assert_ne!(mac(h1), mac2);
    until(
        "the client's neighbour cache follows the VIP to host 2",
        || neighbour(client, &vip).as_ref() == Some(&mac2),
    );
    let (_web2, _d2) = web_server(h2, &vip, port);
    until("the client reaches host 2 through the VIP", || {
        who(client, &vip, port).as_deref() == Some(h2.name())
    });
    stop(holder).await;
    assert!(!has_addr(h2, &cidr));
}

#[tokio::test]
#[ignore = "privileged: run by .ci/run"]
async fn acquire_and_release_are_idempotent() {
    let lab = Lab::new("videm", 1).expect("lab");
    let h = lab.host(1);
    let cidr = format!("{}/24", lab.addr(100));
    for _ in 0..2 {
        let o = vip_tool(h, &["acquire", &cidr, "dev", "eth0"]);
        assert!(o.status.success(), "acquire: {}", stderr(&o));
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "acquired");
        assert_eq!(
            addrs(h).matches(&format!(" {cidr} ")).count(),
            1,
            "{}",
            addrs(h)
        );
    }
    for _ in 0..2 {
        let o = vip_tool(h, &["release", &cidr, "dev", "eth0"]);
        assert!(o.status.success(), "release: {}", stderr(&o));
        assert!(!has_addr(h, &cidr), "{}", addrs(h));
    }
    // The host's own address was never touched.
    assert!(has_addr(h, &format!("{}/24", h.addr())));
}

#[tokio::test]
#[ignore = "privileged: run by .ci/run"]
async fn ipv6_vip_is_added_and_removed() {
    let lab = Lab::new("vsix", 1).expect("lab");
    let h = lab.host(1);
    let cidr = "fd77::100/64";
    let o = vip_tool(h, &["acquire", cidr, "dev", "eth0"]);
    assert!(o.status.success(), "acquire: {}", stderr(&o));
    assert!(has_addr(h, cidr), "{}", addrs(h));
    let o = vip_tool(h, &["release", cidr, "dev", "eth0"]);
    assert!(o.status.success(), "release: {}", stderr(&o));
    assert!(!has_addr(h, cidr), "{}", addrs(h));
}

#[tokio::test]
#[ignore = "privileged: run by .ci/run"]
async fn errors_name_the_interface_and_the_capability() {
    let lab = Lab::new("verr", 1).expect("lab");
    let h = lab.host(1);
    let cidr = format!("{}/24", lab.addr(100));

    let o = vip_tool(h, &["acquire", &cidr, "dev", "eth9"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("interface `eth9` does not exist"),
        "{}",
        stderr(&o)
    );

    // Root without CAP_NET_ADMIN: dropped from the bounding and inheritable
    // sets, so the exec'd tool has it neither permitted nor effective.
    let setpriv = |drop: &str| {
        let mut c = h.command("setpriv");
        c.args(["--inh-caps=-all", "--ambient-caps=-all"])
            .arg(format!("--bounding-set={drop}"))
            .arg("--")
            .arg(tool())
            .args(["acquire", &cidr, "dev", "eth0"]);
        c.output().expect("run setpriv")
    };
    let o = setpriv("-net_admin,-net_raw");
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&format!("adding VIP {cidr} dev eth0 needs CAP_NET_ADMIN")),
        "{}",
        stderr(&o)
    );
    let o = setpriv("-net_raw");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("needs CAP_NET_RAW"), "{}", stderr(&o));
    assert!(
        !has_addr(h, &cidr),
        "a failed acquire left the VIP: {}",
        addrs(h)
    );
}

#[tokio::test]
#[ignore = "privileged: run by .ci/run"]
async fn refresh_puts_a_removed_vip_back_while_held() {
    let lab = Lab::new("vref", 1).expect("lab");
    let h = lab.host(1);
    let cidr = format!("{}/24", lab.addr(100));
    let mut c = h.command(tool());
    c.args([
        "hold",
        &cidr,
        "dev",
        "eth0",
        "--repeat-after-ms",
        "100",
        "--refresh-ms",
        "100",
    ]);
    let holder = ChildProcess::spawn(&mut c).expect("start hold");
    assert!(
        holder.wait_for_line(|l| l == "held", WAIT).await.is_some(),
        "hold never said held: {}",
        holder.stderr_text()
    );
    // Someone else removes the address behind the holder's back.
    h.ip(&["addr", "del", &cidr, "dev", "eth0"])
        .expect("ip addr del");
    until("the refresh adds the VIP back", || has_addr(h, &cidr));
    stop(holder).await;
    assert!(!has_addr(h, &cidr), "{}", addrs(h));
}
