//! Singleton and pool behaviour with in-process nodes on a real nats-server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_runtime::app::{App, Mode, Role};
use cluster_runtime::config::Config;
use cluster_runtime::instance::RoleEvent;
use cluster_runtime::lease::LeaseTiming;
use cluster_runtime::platform::Platform;
use cluster_testing::invariants::History;
use cluster_testing::{NatsServer, ServerOptions};

fn config(url: &str, node: &str) -> Config {
    let mut c = Config::default();
    c.nats.urls = vec![url.to_owned()];
    c.node = node.to_owned();
    c.platform = "t".into();
    c.health_addr = None;
    c
}

async fn start(url: &str, node: &str, app: App, log: Arc<Mutex<Vec<RoleEvent>>>) -> Platform {
    Platform::builder()
        .config(config(url, node))
        .node_lease(LeaseTiming::from_ttl(Duration::from_secs(1)).expect("timing"))
        .app(app)
        .on_role_change(move |e| log.lock().expect("log").push(e.clone()))
        .start()
        .await
        .expect("start")
}

async fn wait_until(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
    let end = tokio::time::Instant::now() + deadline;
    while !f() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn singleton() -> App {
    App::builder("counter")
        .mode(Mode::Singleton)
        .lease_ttl(Duration::from_secs(1))
        .build()
        .expect("app")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_contenders_one_active_then_stepdown_hands_over() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut nodes = Vec::new();
    for n in ["n1", "n2", "n3"] {
        nodes.push(start(&server.url(), n, singleton(), log.clone()).await);
    }
    let roles = |nodes: &[Platform]| -> Vec<Role> {
        nodes
            .iter()
            .map(|p| p.app("counter").expect("app").role())
            .collect()
    };
    wait_until("one active, two standby", Duration::from_secs(10), || {
        let r = roles(&nodes);
        r.iter().filter(|r| **r == Role::Active).count() == 1
            && r.iter().filter(|r| **r == Role::Standby).count() == 2
    })
    .await;
    let first = nodes
        .iter()
        .position(|p| p.app("counter").expect("app").is_active())
        .expect("active");
    let epoch1 = nodes[first]
        .app("counter")
        .expect("app")
        .epoch()
        .expect("epoch");
    nodes[first]
        .app("counter")
        .expect("app")
        .stepdown()
        .await
        .expect("stepdown");
    wait_until("another node active", Duration::from_secs(10), || {
        nodes
            .iter()
            .enumerate()
            .any(|(i, p)| i != first && p.app("counter").expect("app").is_active())
    })
    .await;
    let second = nodes
        .iter()
        .position(|p| p.app("counter").expect("app").is_active())
        .expect("active");
    assert_ne!(first, second);
    let epoch2 = nodes[second]
        .app("counter")
        .expect("app")
        .epoch()
        .expect("epoch");
    assert!(epoch2 > epoch1, "epoch must grow: {epoch1} -> {epoch2}");
    for p in nodes {
        p.shutdown().await;
    }
    let history = History {
        roles: log.lock().expect("log").clone(),
        ..Default::default()
    };
    history.check("counter").expect("invariants");
    assert!(history.intervals("counter").len() >= 2);
}
