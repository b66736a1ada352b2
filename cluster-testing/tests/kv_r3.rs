//! Invariant 5 for KV: with a 3-server NATS cluster (R3 bucket), killing
//! one server loses no acknowledged write.

use std::time::Duration;

use cluster_runtime::app::{App, Mode};
use cluster_runtime::config::Config;
use cluster_runtime::kv::{Kv, KvOptions};
use cluster_runtime::platform::Platform;
use cluster_testing::NatsCluster;

const WRITES: usize = 200;

fn addrs(urls: &[String]) -> Vec<async_nats::ServerAddr> {
    urls.iter()
        .map(|u| u.parse().expect("server url"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_one_server_loses_no_acknowledged_kv_write() {
    let mut cluster = NatsCluster::start(3).await.expect("nats cluster");
    let mut config = Config::default();
    config.nats.urls = cluster.client_urls();
    config.node = "n1".into();
    config.platform = "r3".into();
    config.health_addr = None;
    let platform = Platform::builder()
        .config(config)
        .app(
            App::builder("store")
                .mode(Mode::Spread)
                .build()
                .expect("app"),
        )
        .start()
        .await
        .expect("start");
    let kv = platform.app("store").expect("ctx").kv().clone();
    kv.open().await.expect("open bucket");

    let client = async_nats::connect(addrs(&cluster.client_urls()))
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("KV_r3_store").await.expect("bucket stream");
    let info = stream.info().await.expect("info").clone();
    assert_eq!(info.config.num_replicas, 3, "R3 by default on 3 servers");
    assert_eq!(
        info.config.storage,
        async_nats::jetstream::stream::StorageType::File
    );
    assert!(
        !info.config.allow_direct,
        "replicated reads go to the leader"
    );

    // Every write below is acknowledged by JetStream before the next.
    for i in 0..WRITES {
        kv.put(&format!("k.{i}"), format!("v{i}"))
            .await
            .expect("acknowledged put");
    }
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .expect("stream leader");
    let victim = cluster
        .servers()
        .iter()
        .position(|s| s.name() == Some(leader.as_str()))
        .expect("leader is one of ours");
    // Kill the bucket's leader: the worst case for acknowledged writes.
    cluster.server(victim).kill();
    let survivors: Vec<String> = cluster
        .servers()
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, s)| s.url())
        .collect();

    let client = async_nats::ConnectOptions::new()
        .connect(addrs(&survivors))
        .await
        .expect("connect to survivors");
    let js = async_nats::jetstream::new(client);
    let reader = Kv::new(js, "r3_store".into(), KvOptions::default(), 3);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for i in 0..WRITES {
        let key = format!("k.{i}");
        // Reads fail while the survivors elect a new leader: retry until
        // the deadline, then the value must be there.
        let value = loop {
            match reader.get(&key).await {
                Ok(v) => break v,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "survivors never answered: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        assert_eq!(
            value.as_deref(),
            Some(format!("v{i}").as_bytes()),
            "acknowledged write {key} lost"
        );
    }
    drop(platform);
}
