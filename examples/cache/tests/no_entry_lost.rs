//! The cache keeps every entry across a graceful join and a graceful leave:
//! partitions move, and their entries move with them.

use std::time::Duration;

use cache::{CacheClient, Store, NAME, PARTITIONS};
use cluster::prelude::*;
use cluster::runtime::naming::Names;
use cluster::runtime::ring::assign;
use cluster::runtime::rpc::RpcClient;
use cluster_testing::{NatsServer, ServerOptions};
use tokio::time::Instant;

const ENTRIES: usize = 400;
const WAIT: Duration = Duration::from_secs(30);

async fn start(url: &str, node: &str, store: Store) -> Platform {
    let mut config = Config::default();
    config.nats.urls = vec![url.to_owned()];
    config.node = node.into();
    config.platform = "t".into();
    config.health_addr = None;
    Platform::builder()
        .config(config)
        .app(cache::app_with(store).expect("app"))
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

async fn all_present(cache: &CacheClient) {
    for i in 0..ENTRIES {
        let key = format!("user:{i}");
        let got = cache.get(&key).await.expect("get");
        assert_eq!(got, Some(format!("value {i}")), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_entry_is_lost_across_a_join_and_a_leave() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let url = server.url();
    let (s1, s2, s3) = (Store::default(), Store::default(), Store::default());
    let c1 = start(&url, "c1", s1.clone()).await;
    let c2 = start(&url, "c2", s2.clone()).await;
    converged(&[&c1, &c2]).await;

    let nats = async_nats::connect(url.as_str()).await.expect("connect");
    let cache = CacheClient::new(&RpcClient::new(nats, Names::new("t").expect("names")));
    for i in 0..ENTRIES {
        let key = format!("user:{i}");
        cache.put(&key, &format!("value {i}")).await.expect("put");
    }
    assert_eq!(s1.len() + s2.len(), ENTRIES);
    assert!(!s1.is_empty() && !s2.is_empty(), "both nodes hold entries");

    // Join: c3 takes about a third of the partitions, with their entries.
    let c3 = start(&url, "c3", s3.clone()).await;
    converged(&[&c1, &c2, &c3]).await;
    all_present(&cache).await;
    assert!(!s3.is_empty(), "entries moved to the new node");
    assert_eq!(s1.len() + s2.len() + s3.len(), ENTRIES);

    // Graceful leave: c1's partitions and entries go to c2 and c3.
    c1.shutdown().await;
    assert!(s1.is_empty(), "the leaving node handed everything over");
    converged(&[&c2, &c3]).await;
    // Reading every key also waits until every partition is served, that
    // is, until every `on_own` has loaded its entries.
    all_present(&cache).await;
    assert_eq!(s2.len() + s3.len(), ENTRIES);

    c2.shutdown().await;
    c3.shutdown().await;
}
