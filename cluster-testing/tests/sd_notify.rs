//! A node started by systemd as a `Type=notify` unit: the notifications it
//! sends on a real Unix datagram socket, as systemd would receive them.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use cluster_testing::node::{NodeProcess, NodeSpec};
use cluster_testing::{NatsServer, ServerOptions};

const BIN: &str = env!("CARGO_BIN_EXE_cluster-test-node");

/// Reads datagrams until one satisfies `want` or the deadline passes.
fn wait_message(socket: &UnixDatagram, deadline: Duration, want: impl Fn(&str) -> bool) -> String {
    let until = Instant::now() + deadline;
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    while Instant::now() < until {
        if let Ok(n) = socket.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if want(&msg) {
                return msg;
            }
            seen.push(msg);
        }
    }
    panic!("no matching notification within {deadline:?}; saw {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_then_watchdog_then_stopping() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");

    let mut spec = NodeSpec::new(BIN, "sd1", &server.url());
    spec.env = vec![
        ("NOTIFY_SOCKET".into(), path.display().to_string()),
        // 400 ms watchdog: a ping every 200 ms.
        ("WATCHDOG_USEC".into(), "400000".into()),
    ];
    let node = NodeProcess::spawn(spec).expect("spawn");
    node.wait_ready(Duration::from_secs(20))
        .await
        .expect("ready");

    let ready = tokio::task::block_in_place(|| {
        wait_message(&socket, Duration::from_secs(20), |m| m.contains("READY=1"))
    });
    assert!(ready.contains("STATUS=node sd1 ready"), "{ready}");
    // Pings keep coming while the node runs.
    for _ in 0..3 {
        tokio::task::block_in_place(|| {
            wait_message(&socket, Duration::from_secs(5), |m| m == "WATCHDOG=1")
        });
    }
    node.terminate().expect("SIGTERM");
    tokio::task::block_in_place(|| {
        wait_message(&socket, Duration::from_secs(10), |m| m == "STOPPING=1")
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_for_another_pid_is_ignored() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let mut spec = NodeSpec::new(BIN, "sd2", &server.url());
    spec.env = vec![
        ("NOTIFY_SOCKET".into(), path.display().to_string()),
        ("WATCHDOG_USEC".into(), "200000".into()),
        // systemd names the main pid; a child that inherits the variables
        // must not ping for it.
        ("WATCHDOG_PID".into(), "1".into()),
    ];
    let node = NodeProcess::spawn(spec).expect("spawn");
    node.wait_ready(Duration::from_secs(20))
        .await
        .expect("ready");
    tokio::task::block_in_place(|| {
        wait_message(&socket, Duration::from_secs(20), |m| m.contains("READY=1"))
    });
    node.terminate().expect("SIGTERM");
    // Everything up to STOPPING=1 must be free of watchdog pings.
    let stopping = tokio::task::block_in_place(|| {
        wait_message(&socket, Duration::from_secs(10), |m| {
            assert_ne!(m, "WATCHDOG=1", "pinged for another pid");
            m == "STOPPING=1"
        })
    });
    assert_eq!(stopping, "STOPPING=1");
}
