//! The app KV (`ctx.kv()`) against a real nats-server: compare-and-set
//! errors, watch order, key validation before I/O, isolation between apps.

mod support;

use std::time::Duration;

use cluster_runtime::app::{App, Mode};
use cluster_runtime::config::Config;
use cluster_runtime::kv::{Kv, KvError, KvErrorKind, KvOperation, KvOptions};
use cluster_runtime::naming::Names;
use cluster_runtime::platform::Platform;
use futures::StreamExt;

async fn kv(url: &str, bucket: &str) -> (Kv, async_nats::jetstream::Context) {
    let client = async_nats::connect(url).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    (
        Kv::new(js.clone(), bucket.to_owned(), KvOptions::default(), 1),
        js,
    )
}

#[tokio::test]
async fn cas_conflicts_return_documented_errors() {
    let server = support::start_server().await;
    let (kv, _) = kv(&server.url(), "t_cas").await;

    let r1 = kv.create("job.1", "a").await.expect("create");
    let err = kv.create("job.1", "b").await.expect_err("second create");
    assert_eq!(err.kind(), KvErrorKind::AlreadyExists);
    assert!(matches!(err, KvError::AlreadyExists { ref key } if key == "job.1"));

    let err = kv
        .update("job.1", "c", r1 + 100)
        .await
        .expect_err("stale revision");
    assert_eq!(
        err,
        KvError::WrongRevision {
            key: "job.1".into(),
            expected: r1 + 100
        }
    );
    let r2 = kv.update("job.1", "c", r1).await.expect("update");
    assert!(r2 > r1);
    // The loser of a race sees WrongRevision, the winner succeeds.
    let (a, b) = tokio::join!(kv.update("job.1", "x", r2), kv.update("job.1", "y", r2));
    assert!(a.is_ok() != b.is_ok(), "exactly one CAS wins: {a:?} {b:?}");
    let loser = a.err().or(b.err()).expect("one error");
    assert_eq!(loser.kind(), KvErrorKind::WrongRevision);

    let rev = kv
        .entry("job.1")
        .await
        .expect("entry")
        .expect("present")
        .revision;
    let err = kv
        .delete_if("job.1", rev - 1)
        .await
        .expect_err("stale delete");
    assert_eq!(err.kind(), KvErrorKind::WrongRevision);
    kv.delete_if("job.1", rev).await.expect("delete");
    assert_eq!(kv.get("job.1").await.expect("get"), None);
    // After a delete the key can be created again.
    kv.create("job.1", "again")
        .await
        .expect("create after delete");
    // An update of a key that never existed expects revision 0.
    kv.update("job.2", "new", 0)
        .await
        .expect("update from nothing");
}

#[tokio::test]
async fn invalid_keys_fail_before_any_io() {
    let server = support::start_server().await;
    let (kv, js) = kv(&server.url(), "t_invalid").await;
    for bad in ["", "a b", "a..b", ".a", "a.", "a.*", "a.>", "ü", "x\r\ny"] {
        let err = kv.put(bad, "v").await.expect_err(bad);
        assert_eq!(err.kind(), KvErrorKind::InvalidKey, "{bad}: {err}");
        assert_eq!(
            kv.get(bad).await.expect_err(bad).kind(),
            KvErrorKind::InvalidKey
        );
        assert_eq!(
            kv.create_json(bad, &1).await.expect_err(bad).kind(),
            KvErrorKind::InvalidKey
        );
    }
    assert_eq!(
        kv.watch("a b").await.expect_err("pattern").kind(),
        KvErrorKind::InvalidKey
    );
    // Nothing was sent: the bucket was never even created.
    assert!(js.get_key_value("t_invalid").await.is_err());
    // Stopping the server does not change the answer for a bad key.
    drop(server);
    assert_eq!(
        kv.put("bad key", "v").await.expect_err("bad").kind(),
        KvErrorKind::InvalidKey
    );
}

#[tokio::test]
async fn watch_delivers_puts_and_deletes_in_order() {
    let server = support::start_server().await;
    let (kv, _) = kv(&server.url(), "t_watch").await;
    kv.put("other", "ignored").await.expect("put");
    kv.put("orders.0", "before").await.expect("put");
    let mut watch = kv.watch("orders.>").await.expect("watch");
    // The current value comes first.
    let first = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("initial")
        .expect("entry");
    assert_eq!(
        (first.key.as_str(), &first.value[..]),
        ("orders.0", &b"before"[..])
    );

    let mut expected = Vec::new();
    for i in 0..20 {
        let key = format!("orders.{}", i % 3);
        if i % 4 == 3 {
            kv.delete(&key).await.expect("delete");
            expected.push((key, KvOperation::Delete, Vec::new()));
        } else {
            let value = format!("v{i}").into_bytes();
            kv.put(&key, value.clone()).await.expect("put");
            expected.push((key, KvOperation::Put, value));
        }
        kv.put("other", "noise").await.expect("noise");
    }
    let mut last_rev = first.revision;
    for (key, op, value) in expected {
        let e = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("in time")
            .expect("entry");
        assert_eq!((e.key.as_str(), e.operation), (key.as_str(), op));
        assert_eq!(&e.value[..], &value[..]);
        assert!(e.revision > last_rev, "revisions grow in watch order");
        last_rev = e.revision;
    }
}

#[tokio::test]
async fn history_keys_and_typed_values() {
    let server = support::start_server().await;
    let (kv, _) = kv(&server.url(), "t_hist").await;
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct User {
        name: String,
        visits: u32,
    }
    for visits in 0..3 {
        kv.put_json(
            "user.1",
            &User {
                name: "ada".into(),
                visits,
            },
        )
        .await
        .expect("put");
    }
    kv.put("user.2", "x").await.expect("put");
    kv.delete("user.2").await.expect("delete");
    let user: User = kv.get_json("user.1").await.expect("get").expect("some");
    assert_eq!(user.visits, 2);
    let (_, rev) = kv
        .entry_json::<User>("user.1")
        .await
        .expect("entry")
        .expect("some");
    kv.update_json(
        "user.1",
        &User {
            name: "ada".into(),
            visits: 3,
        },
        rev,
    )
    .await
    .expect("typed cas");
    let history = kv.history("user.1").await.expect("history");
    assert_eq!(history.len(), 4);
    assert!(history.windows(2).all(|w| w[0].revision < w[1].revision));
    let h2 = kv.history("user.2").await.expect("history");
    assert_eq!(
        h2.iter().map(|e| e.operation).collect::<Vec<_>>(),
        [KvOperation::Put, KvOperation::Delete]
    );
    assert!(kv.history("never").await.expect("history").is_empty());
    assert_eq!(kv.keys().await.expect("keys"), ["user.1"]);
    let err = kv.get_json::<u64>("user.1").await.expect_err("wrong type");
    assert_eq!(err.kind(), KvErrorKind::Codec);
}

fn config(url: &str, node: &str) -> Config {
    let mut c = Config::default();
    c.nats.urls = vec![url.to_owned()];
    c.node = node.to_owned();
    c.platform = "iso".into();
    c.health_addr = None;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_apps_cannot_see_each_others_keys() {
    let server = support::start_server().await;
    let platform = Platform::builder()
        .config(config(&server.url(), "n1"))
        .app(
            App::builder("alpha")
                .mode(Mode::Spread)
                .build()
                .expect("app"),
        )
        .app(
            App::builder("beta")
                .mode(Mode::Spread)
                .build()
                .expect("app"),
        )
        .start()
        .await
        .expect("start");
    let alpha = platform.app("alpha").expect("alpha");
    let beta = platform.app("beta").expect("beta");
    assert_eq!(alpha.kv().bucket(), "iso_alpha");
    assert_eq!(beta.kv().bucket(), "iso_beta");

    alpha.kv().put("secret", "a").await.expect("put");
    beta.kv().put("public", "b").await.expect("put");
    assert_eq!(beta.kv().get("secret").await.expect("get"), None);
    assert_eq!(alpha.kv().get("public").await.expect("get"), None);
    assert_eq!(alpha.kv().keys().await.expect("keys"), ["secret"]);
    assert_eq!(beta.kv().keys().await.expect("keys"), ["public"]);
    // Same key, separate values.
    beta.kv().put("secret", "b's own").await.expect("put");
    assert_eq!(
        alpha.kv().get("secret").await.expect("get").as_deref(),
        Some(&b"a"[..])
    );
    // Keys cannot climb out of the bucket: subject syntax is refused.
    for escape in ["$KV.iso_beta.public", "*", ">", "..public"] {
        assert!(alpha.kv().get(escape).await.is_err(), "{escape}");
    }
    // The bucket is a stock NATS KV bucket.
    let names = Names::new("iso").expect("names");
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.expect("nats"));
    let raw = js
        .get_key_value(names.app_kv_bucket("alpha"))
        .await
        .expect("bucket");
    assert_eq!(
        raw.get("secret").await.expect("get").as_deref(),
        Some(&b"a"[..])
    );
    platform.shutdown().await;
}
