//! Events against a real nats-server: core subscriptions with wildcards,
//! durable subscriptions across restarts, platform events, notifications.

mod support;

use std::time::Duration;

use cluster_runtime::events::{Event, EventError, Events};
use cluster_runtime::naming::Names;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

fn names() -> Names {
    Names::new("t").expect("platform")
}

async fn events(url: &str, app: &str, node: &str) -> Events {
    let nats = async_nats::connect(url).await.expect("connect");
    Events::new(nats, names(), app, node).expect("events")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Placed {
    order: u64,
}

async fn next<T, S>(stream: &mut S) -> Event<T>
where
    S: Stream<Item = Result<Event<T>, EventError>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an event within 5 s")
        .expect("stream open")
        .expect("event ok")
}

async fn quiet<T, S>(stream: &mut S, for_: Duration)
where
    S: Stream<Item = Result<Event<T>, EventError>> + Unpin,
    T: std::fmt::Debug,
{
    if let Ok(Some(extra)) = tokio::time::timeout(for_, stream.next()).await {
        panic!("unexpected event {extra:?}");
    }
}

#[tokio::test]
async fn subscribe_with_wildcards_sees_typed_events_and_their_source() {
    let nats = support::start_server().await;
    let ev = events(&nats.url(), "orders", "n1").await;
    let mut placed = ev.subscribe::<Placed>("placed.*").await.expect("sub");
    let mut all = ev.subscribe::<serde_json::Value>(">").await.expect("sub");
    ev.publish("placed.eu", &Placed { order: 1 })
        .await
        .expect("pub");
    ev.publish("shipped", &Placed { order: 1 })
        .await
        .expect("pub");
    let e = next(&mut placed).await;
    assert_eq!(e.event_type, "placed.eu");
    assert_eq!(e.subject, "t.orders.events.placed.eu");
    assert_eq!(e.payload, Placed { order: 1 });
    assert_eq!(e.source_app.as_deref(), Some("orders"));
    assert_eq!(e.source_node.as_deref(), Some("n1"));
    assert_eq!(next(&mut all).await.event_type, "placed.eu");
    assert_eq!(next(&mut all).await.event_type, "shipped");
    quiet(&mut placed, Duration::from_millis(100)).await;

    // A payload of the wrong shape is an error item; the stream goes on.
    ev.publish("placed.us", &"not an order").await.expect("pub");
    ev.publish("placed.us", &Placed { order: 2 })
        .await
        .expect("pub");
    let bad = tokio::time::timeout(Duration::from_secs(5), placed.next())
        .await
        .expect("item")
        .expect("open");
    assert!(matches!(bad, Err(EventError::Decode { .. })), "{bad:?}");
    assert_eq!(next(&mut placed).await.payload, Placed { order: 2 });

    // Invalid types and patterns are refused before anything is sent.
    assert!(ev.publish("placed.*", &1).await.is_err());
    assert!(ev.publish("", &1).await.is_err());
    assert!(ev.subscribe::<u64>("a.>.b").await.is_err());
}

#[tokio::test]
async fn durable_subscription_gets_every_event_once_in_order_across_restart() {
    let nats = support::start_server().await;
    let ev = events(&nats.url(), "orders", "n1").await;
    let mut sub = ev
        .subscribe_durable::<u64>("placed.>", "billing")
        .await
        .expect("durable");
    for i in 0..10u64 {
        ev.publish("placed.eu", &i).await.expect("pub");
    }
    for i in 0..10u64 {
        let e = next(&mut sub).await;
        assert_eq!(e.payload, i);
        assert!(e.sequence.is_some());
    }
    sub.close().await.expect("close acks the last event");

    // Stopped: 1000 events are published meanwhile (some not matching).
    for i in 10..1010u64 {
        ev.publish("placed.us", &i).await.expect("pub");
        if i % 100 == 0 {
            ev.publish("cancelled", &i).await.expect("pub");
        }
    }

    // Restarted (new connection, as after a process restart).
    let ev2 = events(&nats.url(), "orders", "n2").await;
    let mut sub = ev2
        .subscribe_durable::<u64>("placed.>", "billing")
        .await
        .expect("durable");
    let started = std::time::Instant::now();
    for i in 10..1010u64 {
        let e = next(&mut sub).await;
        assert_eq!(e.payload, i, "exactly once, in order");
        assert_eq!(e.source_node.as_deref(), Some("n1"));
    }
    quiet(&mut sub, Duration::from_millis(500)).await;
    eprintln!("1000 durable events in {:?}", started.elapsed());
    sub.close().await.expect("close");

    // The same name with another pattern is refused.
    let err = ev2
        .subscribe_durable::<u64>("cancelled", "billing")
        .await
        .expect_err("pattern clash");
    assert!(err.to_string().contains("already exists"), "{err}");
}

#[tokio::test]
async fn dropped_durable_subscription_redelivers_the_event_in_hand() {
    let nats = support::start_server().await;
    let ev = events(&nats.url(), "orders", "n1").await;
    let mut sub = ev
        .subscribe_durable_with::<u64>(
            ">",
            "audit",
            cluster_runtime::events::DurableOptions {
                ack_wait: Duration::from_secs(1),
                ..Default::default()
            },
        )
        .await
        .expect("durable");
    for i in 0..3u64 {
        ev.publish("x", &i).await.expect("pub");
    }
    assert_eq!(next(&mut sub).await.payload, 0);
    assert_eq!(next(&mut sub).await.payload, 1);
    drop(sub); // "crash" while holding event 1
    let mut sub = ev
        .subscribe_durable::<u64>(">", "audit")
        .await
        .expect("durable");
    assert_eq!(next(&mut sub).await.payload, 1, "at least once");
    assert_eq!(next(&mut sub).await.payload, 2);
    sub.close().await.expect("close");
}

#[tokio::test]
async fn platform_events_carry_their_source_and_can_be_durable() {
    let nats = support::start_server().await;
    let orders = events(&nats.url(), "orders", "n1").await;
    let audit = events(&nats.url(), "audit-log", "n2").await;
    let mut live = audit
        .subscribe_platform::<String>("deploy.*")
        .await
        .expect("sub");
    let mut durable = audit
        .subscribe_platform_durable::<String>(">", "all")
        .await
        .expect("durable");
    orders
        .publish_platform("deploy.done", &"v2".to_owned())
        .await
        .expect("pub");
    for e in [next(&mut live).await, next(&mut durable).await] {
        assert_eq!(e.event_type, "deploy.done");
        assert_eq!(e.subject, "t._.events.deploy.done");
        assert_eq!(e.payload, "v2");
        assert_eq!(e.source_app.as_deref(), Some("orders"));
        assert_eq!(e.source_node.as_deref(), Some("n1"));
    }
    durable.close().await.expect("close");
}

#[tokio::test]
async fn notify_reaches_another_apps_events() {
    let nats = support::start_server().await;
    let orders = events(&nats.url(), "orders", "n1").await;
    let billing = events(&nats.url(), "billing", "n2").await;
    let mut inbox = billing
        .subscribe::<Placed>("order-placed")
        .await
        .expect("sub");
    orders
        .notify("billing", "order-placed", &Placed { order: 7 })
        .await
        .expect("notify");
    let e = next(&mut inbox).await;
    assert_eq!(e.subject, "t.billing.events.order-placed");
    assert_eq!(e.payload, Placed { order: 7 });
    assert_eq!(e.source_app.as_deref(), Some("orders"));
    assert!(orders.notify("Bad", "x", &1).await.is_err());
}
