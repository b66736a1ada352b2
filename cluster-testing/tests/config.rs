//! Bad configuration: one clear message naming the problem, non-zero exit,
//! nothing started (no node record written to NATS).

use std::process::Command;
use std::time::Duration;

use cluster_testing::{NatsServer, ServerOptions};

const BIN: &str = env!("CARGO_BIN_EXE_cluster-test-node");

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .args(["--health-addr", "off"])
        .env_remove("NATS_URL")
        .output()
        .expect("run cluster-test-node");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stderr)
}

async fn no_node_records(url: &str, platform: &str) -> bool {
    let client = async_nats::connect(url).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    match js.get_key_value(format!("{platform}_nodes")).await {
        Err(_) => true,
        Ok(kv) => {
            use futures::StreamExt;
            kv.keys().await.expect("keys").next().await.is_none()
        }
    }
}

fn error_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.starts_with("error:")).collect()
}

#[tokio::test]
async fn bad_settings_are_refused_with_one_message_and_nothing_starts() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let url = server.url();
    let cases: &[(&[&str], &str)] = &[
        (&["--platform", "Prod"], "--platform"),
        (&["--node", "Node_1"], "--node"),
        (&["--app", "nodes"], "reserved"),
        (&["--app", "my.app"], "invalid"),
        (&["--lease-ttl", "0"], "lease_ttl"),
        (
            &[
                "--lease-ttl",
                "2",
                "--lease-renew-ms",
                "500",
                "--lease-deadline-ms",
                "2000",
            ],
            "shorter than lease_ttl",
        ),
        (
            &[
                "--lease-ttl",
                "3",
                "--lease-renew-ms",
                "1000",
                "--lease-deadline-ms",
                "1100",
            ],
            "1.2",
        ),
        (&["--mode", "ring(100)"], "power of two"),
        (&["--placement", "zone=a"], "placement"),
        (&["--label", "a b"], "--label"),
    ];
    for (args, expect) in cases {
        let mut full = vec!["--nats", url.as_str(), "--platform", "cfg"];
        full.extend_from_slice(args);
        let (code, stderr) = run(&full);
        assert_ne!(code, 0, "{args:?} must fail");
        let errors = error_lines(&stderr);
        assert_eq!(
            errors.len(),
            1,
            "{args:?}: exactly one error line, got {stderr}"
        );
        assert!(
            errors[0].contains(expect),
            "{args:?}: error should mention `{expect}`: {}",
            errors[0]
        );
    }
    assert!(
        no_node_records(&url, "cfg").await,
        "a refused node must not register"
    );
}

#[tokio::test]
async fn unreachable_nats_and_disabled_jetstream_are_named() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let url = format!("nats://127.0.0.1:{port}");
    let (code, stderr) = run(&["--nats", &url]);
    assert_ne!(code, 0);
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("cannot connect to NATS") && errors[0].contains(&url),
        "{}",
        errors[0]
    );

    let plain = NatsServer::start(ServerOptions {
        jetstream: false,
        ..Default::default()
    })
    .await
    .expect("nats");
    let started = std::time::Instant::now();
    let (code, stderr) = run(&["--nats", &plain.url()]);
    assert_ne!(code, 0);
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("JetStream is not enabled"),
        "{}",
        errors[0]
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn without_a_nats_url_a_node_starts_its_own_server() {
    use cluster_testing::node::NodeEvent;
    use cluster_testing::process::ChildProcess;
    let mut cmd = Command::new(BIN);
    cmd.args(["--node", "solo", "--health-addr", "off", "--tick-ms", "0"])
        .env_remove("NATS_URL");
    let mut child = ChildProcess::spawn(&mut cmd).expect("spawn");
    let ready = child
        .wait_for_line(
            |l| l.contains("\"event\":\"ready\""),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|| panic!("dev node not ready: {}", child.stderr_text()));
    let Ok(NodeEvent::Ready { nats, .. }) = serde_json::from_str::<NodeEvent>(&ready) else {
        panic!("bad ready line {ready}")
    };
    assert!(nats.starts_with("nats://127.0.0.1:"), "{nats}");
    child
        .wait_for_line(
            |l| l.contains("\"role\":\"active\""),
            Duration::from_secs(30),
        )
        .await
        .expect("the only node becomes active on its own server");
    child.terminate().expect("SIGTERM");
    let status = child
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("exit");
    assert!(status.success());
}

#[tokio::test]
async fn nkey_authentication_is_used_and_a_missing_key_is_named() {
    use cluster_testing::process::ChildProcess;
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().expect("seed");
    let server = NatsServer::start(ServerOptions {
        extra_config: Some(format!(
            "authorization {{\n  users = [ {{ nkey: \"{}\" }} ]\n}}",
            user.public_key()
        )),
        ..Default::default()
    })
    .await
    .expect("nats with nkey auth");
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        format!("nats = \"{}\"\nnats_nkey = \"{seed}\"\n", server.url()),
    )
    .expect("write");

    let mut cmd = Command::new(BIN);
    cmd.args([
        "--config",
        file.to_str().expect("utf-8"),
        "--node",
        "auth1",
        "--health-addr",
        "off",
        "--tick-ms",
        "0",
    ])
    .env_remove("NATS_URL");
    let mut child = ChildProcess::spawn(&mut cmd).expect("spawn");
    child
        .wait_for_line(
            |l| l.contains("\"role\":\"active\""),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|| {
            panic!(
                "node with the nkey did not become active: {}",
                child.stderr_text()
            )
        });
    child.terminate().expect("SIGTERM");
    assert!(child
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());

    let (code, stderr) = run(&["--nats", &server.url()]);
    assert_ne!(code, 0);
    let errors = error_lines(&stderr);
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("cannot connect to NATS") && errors[0].contains("uthoriz"),
        "{}",
        errors[0]
    );
}
