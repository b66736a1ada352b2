//! The `cluster` CLI reads the platform straight from NATS and agrees with
//! the nodes' own `/status`, before and after a hand-over.

use std::process::Command;
use std::time::Duration;

use cluster::prelude::*;
use cluster::runtime::inspect::PlatformView;
use cluster::runtime::nats_server::http_get;
use cluster::runtime::platform::Status;
use cluster_testing::{NatsServer, ServerOptions};

const CLI: &str = env!("CARGO_BIN_EXE_cluster");

fn cli(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(CLI)
        .args(["--nats", url, "--platform", "cli"])
        .args(args)
        .output()
        .expect("run cluster");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn node(url: &str, id: &str) -> Platform {
    let mut config = Config::default();
    config.nats.urls = vec![url.to_owned()];
    config.platform = "cli".into();
    config.node = id.into();
    config.health_addr = Some("127.0.0.1:0".parse().expect("addr"));
    let app = App::builder("counter")
        .lease_ttl(Duration::from_secs(1))
        .handle("whoami", |ctx, (): ()| async move {
            Ok::<_, cluster::Error>(ctx.node().to_owned())
        })
        .build()
        .expect("app");
    Platform::builder()
        .config(config)
        .app(app)
        .start()
        .await
        .expect("start")
}

async fn http_status(p: &Platform) -> Status {
    let port = p.health_addr().expect("health addr").port();
    let (code, body) = http_get(port, "/status").await.expect("GET /status");
    assert_eq!(code, 200);
    serde_json::from_str(&body).expect("status JSON")
}

/// Polls until the CLI's view and every node's `/status` agree on leader,
/// epoch and standbys; returns the CLI's view.
async fn agreed_view(url: &str, nodes: &[Platform]) -> PlatformView {
    let mut last = String::new();
    for _ in 0..200 {
        let (ok, stdout, stderr) = cli(url, &["status", "--json"]);
        assert!(ok, "cluster status failed: {stderr}");
        let view: PlatformView = serde_json::from_str(&stdout).expect("view JSON");
        let app = view.apps.get("counter").cloned().unwrap_or_default();
        let mut statuses = Vec::new();
        for n in nodes {
            statuses.push(http_status(n).await);
        }
        let active: Vec<&Status> = statuses
            .iter()
            .filter(|s| s.apps["counter"].role == Role::Active)
            .collect();
        let mut standbys: Vec<String> = statuses
            .iter()
            .filter(|s| s.apps["counter"].role == Role::Standby)
            .map(|s| s.node.clone())
            .collect();
        standbys.sort();
        let mut cli_standbys = app.standbys.clone();
        cli_standbys.sort();
        if active.len() == 1
            && app.leader.as_deref() == Some(active[0].node.as_str())
            && app.epoch == active[0].apps["counter"].epoch
            && statuses
                .iter()
                .all(|s| s.apps["counter"].leader == app.leader)
            && cli_standbys == standbys
            && view.members.len() == nodes.len()
        {
            return view;
        }
        last = format!("cli: {app:?}\nnodes: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("CLI and /status never agreed:\n{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_agrees_with_node_status_before_and_after_stepdown() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let url = server.url();
    let nodes = vec![
        node(&url, "c1").await,
        node(&url, "c2").await,
        node(&url, "c3").await,
    ];
    let before = agreed_view(&url, &nodes).await;
    let old = before.apps["counter"].leader.clone().expect("leader");

    let (ok, stdout, stderr) = cli(&url, &["stepdown", "counter"]);
    assert!(ok, "stepdown failed: {stderr}");
    assert!(
        stdout.contains(&old),
        "stepdown names the node that handed over: {stdout}"
    );
    let mut after = agreed_view(&url, &nodes).await;
    for _ in 0..100 {
        if after.apps["counter"].leader.as_deref() != Some(old.as_str()) {
            break;
        }
        after = agreed_view(&url, &nodes).await;
    }
    assert_ne!(
        after.apps["counter"].leader.as_deref(),
        Some(old.as_str()),
        "a standby took over"
    );
    assert!(after.apps["counter"].epoch > before.apps["counter"].epoch);

    // `cluster call` reaches the active instance, or a named one.
    let active = after.apps["counter"].leader.clone().expect("leader");
    let (ok, stdout, stderr) = cli(&url, &["call", "counter", "whoami"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), format!("\"{active}\""));
    let (ok, stdout, _) = cli(&url, &["call", "counter", "whoami", "--node", "c1"]);
    assert!(ok);
    assert_eq!(stdout.trim(), "\"c1\"");
    let (ok, _, stderr) = cli(&url, &["call", "counter", "nope"]);
    assert!(!ok);
    assert!(
        stderr.contains("not_found") || stderr.contains("no method") || stderr.contains("nope"),
        "{stderr}"
    );

    let (ok, table, _) = cli(&url, &["status"]);
    assert!(ok);
    assert!(
        table.contains("counter") && table.contains("singleton"),
        "{table}"
    );
    for p in nodes {
        p.shutdown().await;
    }
}

#[tokio::test]
async fn clear_messages_without_members_or_nats() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let (ok, _, stderr) = cli(&server.url(), &["status"]);
    assert!(!ok);
    assert!(stderr.contains("has no members"), "{stderr}");
    let (ok, _, stderr) = cli(&server.url(), &["stepdown", "counter"]);
    assert!(!ok);
    assert!(
        stderr.contains("no members") || stderr.contains("no active instance"),
        "{stderr}"
    );
    let (ok, _, stderr) = cli("nats://127.0.0.1:1", &["status"]);
    assert!(!ok);
    assert!(stderr.contains("cannot connect to NATS"), "{stderr}");
}
