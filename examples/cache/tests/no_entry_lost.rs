//! The cache keeps every entry across a graceful join and a graceful leave:
//! partitions move, and their entries move with them.

use std::time::Duration;

use cache::{Cache, Get, Put, NAME, PARTITIONS};
use cluster::prelude::*;
use cluster::runtime::naming::Names;
use cluster::runtime::ring::assign;
use cluster::runtime::rpc::RpcClient;
use cluster_testing::{NatsServer, ServerOptions};
use tokio::time::Instant;

const ENTRIES: usize = 400;
const WAIT: Duration = Duration::from_secs(30);

async fn start(url: &str, node: &str) -> Platform {
    let mut config = Config::default();
    config.nats.urls = vec![url.to_owned()];
    config.node = node.into();
    config.platform = "t".into();
    config.health_addr = None;
    Platform::builder()
        .config(config)
        .app(cluster::__private::build_app::<Cache>().expect("app"))
        .start()
        .await
        .expect("start")
}

/// Waits until each node owns exactly its desired partitions (claimed; the
/// calls reach them once `on_own` has run).
async fn converged(nodes: &[&Platform]) {
    let ids: Vec<&str> = nodes.iter().map(|p| p.node()).collect();
    let owners = assign(NAME, PARTITIONS, &ids);
    let end = Instant::now() + WAIT;
    loop {
        let done = nodes.iter().enumerate().all(|(i, p)| {
            let want: Vec<u32> = (0..PARTITIONS)
                .filter(|q| owners[*q as usize] == Some(i))
                .collect();
            p.app(NAME).expect("app").ring().owned().as_slice() == want.as_slice()
        });
        if done {
            return;
        }
        assert!(Instant::now() < end, "ring did not converge over {ids:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Entries held by one node's instance (an instance call).
async fn held(rpc: &RpcClient, node: &str) -> usize {
    rpc.app(NAME)
        .method("entries")
        .instance(node)
        .send(&())
        .await
        .expect("entries")
}

async fn all_present(rpc: &RpcClient) {
    let cache = rpc.typed::<Cache>();
    for i in 0..ENTRIES {
        let key = format!("user:{i}");
        let got = cache.get(Get { key: key.clone() }).await.expect("get");
        assert_eq!(got, Some(format!("value {i}")), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_entry_is_lost_across_a_join_and_a_leave() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let url = server.url();
    let c1 = start(&url, "c1").await;
    let c2 = start(&url, "c2").await;
    converged(&[&c1, &c2]).await;

    let nats = async_nats::connect(url.as_str()).await.expect("connect");
    let rpc = RpcClient::new(nats, Names::new("t").expect("names"));
    let cache = rpc.typed::<Cache>();
    for i in 0..ENTRIES {
        let put = Put {
            key: format!("user:{i}"),
            value: format!("value {i}"),
        };
        cache.put(put).await.expect("put");
    }
    let (h1, h2) = (held(&rpc, "c1").await, held(&rpc, "c2").await);
    assert_eq!(h1 + h2, ENTRIES);
    assert!(h1 > 0 && h2 > 0, "both nodes hold entries");

    // Join: c3 takes about a third of the partitions, with their entries.
    let c3 = start(&url, "c3").await;
    converged(&[&c1, &c2, &c3]).await;
    all_present(&rpc).await;
    let h3 = held(&rpc, "c3").await;
    assert!(h3 > 0, "entries moved to the new node");
    assert_eq!(
        held(&rpc, "c1").await + held(&rpc, "c2").await + h3,
        ENTRIES
    );

    // Graceful leave: c1's partitions and entries go to c2 and c3.
    c1.shutdown().await;
    converged(&[&c2, &c3]).await;
    // Reading every key also waits until every partition is served, that
    // is, until every `on_own` has loaded its entries.
    all_present(&rpc).await;
    assert_eq!(held(&rpc, "c2").await + held(&rpc, "c3").await, ENTRIES);

    c2.shutdown().await;
    c3.shutdown().await;
}
