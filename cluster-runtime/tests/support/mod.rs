//! Minimal temporary fixture: one `nats-server -js` on a free port with a
//! temp store, killed on drop. To be replaced by
//! `cluster_runtime::nats_server::NatsServer` at integration.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Fixture {
    child: Child,
    port: u16,
    _store: tempfile::TempDir,
}

impl Fixture {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        return bin.into();
    }
    let mut dir = Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    while let Some(d) = dir {
        let candidate = d.join(".tools/bin/nats-server");
        if candidate.exists() {
            return candidate;
        }
        dir = d.parent().map(PathBuf::from);
    }
    PathBuf::from("nats-server")
}

pub fn start_server() -> Fixture {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let store = tempfile::tempdir().expect("temp dir");
    let child = Command::new(binary())
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server (set NATS_SERVER_BIN or run scripts/lib/tools.sh ensure_nats_server)");
    let fixture = Fixture {
        child,
        port,
        _store: store,
    };
    let until = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < until,
            "nats-server did not start on {port}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    fixture
}
