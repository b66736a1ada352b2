//! RPC against a real nats-server: routing modes, errors, deadlines, retries,
//! trace propagation, codecs and NATS micro visibility.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use cluster_runtime::naming::Names;
use cluster_runtime::rpc::{
    wire, xxh3_partition, ApiMode, AppRef, Codec, ErrorCode, HandlerError, Handlers, RemoteApp,
    RequestInfo, RpcClient, RpcError, RpcServer, ServerOptions, TraceContext, TypedClient,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

const APP: &str = "counter";

fn names() -> Names {
    Names::new("t").expect("platform name")
}

async fn connect(url: &str) -> async_nats::Client {
    async_nats::connect(url).await.expect("connect")
}

#[derive(Clone)]
struct Ctx {
    node: String,
    rpc: RpcClient,
    running: Arc<AtomicUsize>,
    max_running: Arc<AtomicUsize>,
    counted: Arc<AtomicUsize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TraceSeen {
    trace_id: String,
    parent_id: String,
    caller_app: Option<String>,
    caller_node: Option<String>,
    remaining_ms: u64,
}

fn seen() -> TraceSeen {
    let info = RequestInfo::current().expect("inside a handler");
    TraceSeen {
        trace_id: info.trace().trace_id(),
        parent_id: info.trace().parent_id(),
        caller_app: info.caller_app().map(str::to_owned),
        caller_node: info.caller_node().map(str::to_owned),
        remaining_ms: u64::try_from(info.remaining().as_millis()).expect("ms"),
    }
}

fn handlers() -> Handlers<Ctx> {
    Handlers::new()
        .handle("whoami", |ctx: Ctx, (): ()| async move {
            Ok::<_, HandlerError>(ctx.node)
        })
        .handle("incr", |_ctx: Ctx, by: u64| async move {
            Ok::<_, HandlerError>(by + 1)
        })
        .handle("panic", |_ctx: Ctx, (): ()| async move {
            if true {
                panic!("boom");
            }
            Ok::<u64, HandlerError>(0)
        })
        .handle("sleep", |_ctx: Ctx, ms: u64| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, HandlerError>(ms)
        })
        .handle("fail_on_n2", |ctx: Ctx, (): ()| async move {
            if ctx.node == "n2" {
                return Err(HandlerError::new("n2 refuses"));
            }
            Ok(ctx.node)
        })
        .handle("trace", |_ctx: Ctx, (): ()| async move {
            Ok::<_, HandlerError>(seen())
        })
        .handle("relay", |ctx: Ctx, (): ()| async move {
            let own = seen();
            let downstream: TraceSeen = ctx.rpc.app("back").method("trace").send(&()).await?;
            Ok::<_, HandlerError>((own, downstream))
        })
        .handle("busy", |ctx: Ctx, ms: u64| async move {
            let now = ctx.running.fetch_add(1, Ordering::SeqCst) + 1;
            ctx.max_running.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            ctx.running.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, HandlerError>(())
        })
        .handle("count", |ctx: Ctx, (): ()| async move {
            Ok::<_, HandlerError>(ctx.counted.fetch_add(1, Ordering::SeqCst) + 1)
        })
        .handle_raw("echo_raw", |_ctx: Ctx, req| async move { Ok(req.payload) })
}

async fn server_with(url: &str, app: &str, node: &str, opts: ServerOptions) -> RpcServer<Ctx> {
    server_ctx(url, app, node, opts).await.0
}

async fn server_ctx(
    url: &str,
    app: &str,
    node: &str,
    opts: ServerOptions,
) -> (RpcServer<Ctx>, Ctx) {
    let nats = connect(url).await;
    let rpc = RpcClient::builder(nats.clone(), names())
        .caller(app, node)
        .build()
        .expect("client");
    let ctx = Ctx {
        node: node.to_owned(),
        rpc,
        running: Arc::default(),
        max_running: Arc::default(),
        counted: Arc::default(),
    };
    let server = RpcServer::with_options(nats, names(), app, node, handlers(), ctx.clone(), opts)
        .expect("server");
    server.start().await.expect("start");
    (server, ctx)
}

async fn server(url: &str, app: &str, node: &str) -> RpcServer<Ctx> {
    server_with(url, app, node, ServerOptions::default()).await
}

async fn caller(url: &str) -> RpcClient {
    RpcClient::new(connect(url).await, names())
}

async fn whoami(call: cluster_runtime::rpc::Call) -> String {
    call.send::<_, String>(&()).await.expect("whoami")
}

#[tokio::test]
async fn exclusive_api_reaches_only_the_active() {
    let nats = support::start_server().await;
    let n1 = server(&nats.url(), APP, "n1").await;
    let n2 = server(&nats.url(), APP, "n2").await;
    n1.serve_api(ApiMode::Exclusive).await.expect("serve");
    let rpc = caller(&nats.url()).await;
    for _ in 0..20 {
        assert_eq!(whoami(rpc.app(APP).method("whoami")).await, "n1");
    }
    // Failover: the old active stops, the new one starts.
    n1.stop_api().await;
    n2.serve_api(ApiMode::Exclusive).await.expect("serve");
    for _ in 0..20 {
        assert_eq!(whoami(rpc.app(APP).method("whoami")).await, "n2");
    }
    assert_eq!(n2.api_mode().await, Some(ApiMode::Exclusive));
    assert_eq!(n1.api_mode().await, None);
}

#[tokio::test]
async fn pool_spreads_calls_over_instances() {
    let nats = support::start_server().await;
    let mut servers = Vec::new();
    for node in ["n1", "n2", "n3"] {
        let s = server(&nats.url(), APP, node).await;
        s.serve_api(ApiMode::Pool).await.expect("serve");
        servers.push(s);
    }
    let rpc = caller(&nats.url()).await;
    let mut count: HashMap<String, usize> = HashMap::new();
    for _ in 0..300 {
        *count
            .entry(whoami(rpc.app(APP).method("whoami")).await)
            .or_default() += 1;
    }
    assert_eq!(count.len(), 3, "every pool instance served: {count:?}");
    assert!(count.values().all(|&n| n >= 30), "roughly even: {count:?}");
}

#[tokio::test]
async fn instance_subject_reaches_that_node() {
    let nats = support::start_server().await;
    let _n1 = server(&nats.url(), APP, "n1").await;
    let _n2 = server(&nats.url(), APP, "n2").await;
    let rpc = caller(&nats.url()).await;
    for node in ["n1", "n2", "n1", "n2"] {
        assert_eq!(
            whoami(rpc.app(APP).method("whoami").instance(node)).await,
            node
        );
    }
}

#[tokio::test]
async fn broadcast_gathers_every_instance_with_per_node_errors() {
    let nats = support::start_server().await;
    let _servers = [
        server(&nats.url(), APP, "n1").await,
        server(&nats.url(), APP, "n2").await,
        server(&nats.url(), APP, "n3").await,
    ];
    let rpc = caller(&nats.url()).await;
    let replies = rpc
        .app(APP)
        .method("fail_on_n2")
        .broadcast(Duration::from_millis(300))
        .send::<_, String>(&())
        .await
        .expect("broadcast");
    let nodes: Vec<_> = replies.iter().map(|r| r.node.as_str()).collect();
    assert_eq!(nodes, ["n1", "n2", "n3"]);
    assert_eq!(replies[0].result.as_ref().expect("n1"), "n1");
    let err = replies[1].result.as_ref().expect_err("n2 fails");
    assert_eq!(err.code(), ErrorCode::Handler);
    assert!(err.to_string().contains("n2 refuses"), "{err}");
    assert_eq!(replies[2].result.as_ref().expect("n3"), "n3");

    // Nobody serves another app: an empty answer, at once.
    let started = Instant::now();
    let none = rpc
        .app("nobody")
        .method("x")
        .broadcast(Duration::from_secs(2))
        .send::<_, String>(&())
        .await
        .expect("broadcast");
    assert!(none.is_empty());
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn partitions_route_to_their_owner_and_survive_hand_off() {
    let nats = support::start_server().await;
    let n1 = server(&nats.url(), "cache", "n1").await;
    let n2 = server(&nats.url(), "cache", "n2").await;
    n1.serve_partitions(0..4).await.expect("serve");
    n2.serve_partitions(4..8).await.expect("serve");
    assert_eq!(n1.partitions().await, [0, 1, 2, 3]);
    let rpc = caller(&nats.url()).await;
    let cache = rpc.app("cache").ring(8);
    for p in 0..8 {
        let want = if p < 4 { "n1" } else { "n2" };
        assert_eq!(whoami(cache.method("whoami").partition(p)).await, want);
    }
    for key in ["user:1", "user:2", "user:3", "order:9"] {
        let p = xxh3_partition(key.as_bytes(), 8);
        assert_eq!(cache.partition_of(key.as_bytes()), Some(p));
        let want = if p < 4 { "n1" } else { "n2" };
        assert_eq!(whoami(cache.method("whoami").key(key)).await, want);
    }
    // Out-of-range partition and key routing without a count are refused.
    let err = cache
        .method("whoami")
        .partition(8)
        .send::<_, String>(&())
        .await
        .expect_err("out of range");
    assert!(matches!(err, RpcError::InvalidCall(_)), "{err}");
    let err = rpc
        .app("cache")
        .method("whoami")
        .key("k")
        .send::<_, String>(&())
        .await
        .expect_err("no count");
    assert!(err.to_string().contains(".ring(P)"), "{err}");

    // Hand-off of partition 0 from n1 to n2: a call in the gap retries.
    n1.stop_partitions([0]).await;
    let call = tokio::spawn({
        let cache = cache.clone();
        async move { whoami(cache.method("whoami").partition(0)).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    n2.serve_partitions([0]).await.expect("serve");
    assert_eq!(call.await.expect("join"), "n2");
}

#[tokio::test]
async fn hand_off_under_load_loses_no_call() {
    let nats = support::start_server().await;
    let n1 = server(&nats.url(), "cache", "n1").await;
    let n2 = server(&nats.url(), "cache", "n2").await;
    n1.serve_partitions([0]).await.expect("serve");
    let rpc = caller(&nats.url()).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let rpc = rpc.clone();
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let who = rpc
                        .app("cache")
                        .method("whoami")
                        .partition(0)
                        .deadline(Duration::from_secs(2))
                        .send::<_, String>(&())
                        .await;
                    seen.push(who);
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    n1.stop_partitions([0]).await;
    n2.serve_partitions([0]).await.expect("serve");
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let mut by_node: HashMap<String, usize> = HashMap::new();
    for c in callers {
        for result in c.await.expect("join") {
            *by_node.entry(result.expect("no call fails")).or_default() += 1;
        }
    }
    assert!(by_node["n1"] > 0 && by_node["n2"] > 0, "{by_node:?}");
}

#[tokio::test]
async fn malformed_requests_get_bad_request() {
    let nats = support::start_server().await;
    let _n1 = server(&nats.url(), APP, "n1").await;
    let rpc = caller(&nats.url()).await;
    let err = rpc
        .app(APP)
        .method("incr")
        .instance("n1")
        .send_raw(Bytes::from_static(b"{not json"))
        .await
        .expect_err("bad payload");
    assert_eq!(err.code(), ErrorCode::BadRequest, "{err}");
    assert!(matches!(err, RpcError::Remote { .. }));

    // Bad headers, straight through async-nats.
    let raw = connect(&nats.url()).await;
    let subject = names().instance_subject(APP, "n1", "incr");
    for (name, value) in [
        (wire::CONTENT_TYPE, "text/plain"),
        (wire::TIMEOUT_MS, "soon"),
        (wire::FENCING_TOKEN, "-1"),
    ] {
        let mut h = HeaderMap::new();
        h.insert(name, value);
        let reply = raw
            .request_with_headers(subject.clone(), h, "1".into())
            .await
            .expect("reply");
        let headers = reply.headers.expect("headers");
        assert_eq!(
            headers.get(wire::ERROR).map(|v| v.as_str()),
            Some("bad_request")
        );
        let body: serde_json::Value = serde_json::from_slice(&reply.payload).expect("json body");
        assert_eq!(body["code"], "bad_request");
        assert!(body["message"].as_str().expect("message").contains(name));
    }
}

#[tokio::test]
async fn unknown_method_is_not_found() {
    let nats = support::start_server().await;
    let n1 = server(&nats.url(), APP, "n1").await;
    n1.serve_api(ApiMode::Exclusive).await.expect("serve");
    let rpc = caller(&nats.url()).await;
    let err = rpc
        .app(APP)
        .method("nope")
        .send::<_, u64>(&())
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), ErrorCode::NotFound);
    assert!(err.to_string().contains("no method `nope`"), "{err}");
    // A partition subject with extra tokens names no method either.
    n1.serve_partitions([3]).await.expect("serve");
    let raw = connect(&nats.url()).await;
    let reply = raw
        .request(
            format!("{}.extra", names().partition_subject(APP, 3, "incr")),
            "1".into(),
        )
        .await
        .expect("reply");
    let body: serde_json::Value = serde_json::from_slice(&reply.payload).expect("json");
    assert_eq!(body["code"], "not_found");
}

#[tokio::test]
async fn panicking_handler_is_internal_and_the_next_call_succeeds() {
    let nats = support::start_server().await;
    let n1 = server(&nats.url(), APP, "n1").await;
    n1.serve_api(ApiMode::Exclusive).await.expect("serve");
    let rpc = caller(&nats.url()).await;
    for _ in 0..3 {
        let err = rpc
            .app(APP)
            .method("panic")
            .send::<_, u64>(&())
            .await
            .expect_err("panics");
        assert_eq!(err.code(), ErrorCode::Internal);
        assert!(err.to_string().contains("boom"), "{err}");
        let n: u64 = rpc
            .app(APP)
            .method("incr")
            .send(&41u64)
            .await
            .expect("next call");
        assert_eq!(n, 42);
    }
}

#[tokio::test]
async fn oversized_payload_fails_before_sending() {
    let nats = support::start_server().await;
    let n1 = server(&nats.url(), APP, "n1").await;
    n1.serve_api(ApiMode::Exclusive).await.expect("serve");
    let rpc = caller(&nats.url()).await;
    // A spy on the subject sees nothing.
    let spy_conn = connect(&nats.url()).await;
    let mut spy = spy_conn
        .subscribe(names().api_subject(APP, "echo_raw"))
        .await
        .expect("spy");
    spy_conn.flush().await.expect("flush");
    let max = rpc.nats().max_payload();
    let started = Instant::now();
    let err = rpc
        .app(APP)
        .method("echo_raw")
        .send_raw(Bytes::from(vec![b'x'; max]))
        .await
        .expect_err("too big");
    assert!(started.elapsed() < Duration::from_millis(100));
    match &err {
        RpcError::PayloadTooLarge { size, max: m, .. } => {
            assert!(*size > max);
            assert_eq!(*m, max);
        }
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("max_payload"), "{err}");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), spy.next())
            .await
            .is_err(),
        "nothing was sent"
    );
    // Just under the limit goes through.
    let ok = rpc
        .app(APP)
        .method("echo_raw")
        .send_raw(Bytes::from(vec![b'x'; max - 1024]))
        .await
        .expect("fits");
    assert_eq!(ok.payload.len(), max - 1024);
}

#[tokio::test]
async fn deadline_exceeded_is_timeout() {
    let nats = support::start_server().await;
    let n1 = server(&nats.url(), APP, "n1").await;
    n1.serve_api(ApiMode::Exclusive).await.expect("serve");
    let rpc = caller(&nats.url()).await;
    let started = Instant::now();
    let err = rpc
        .app(APP)
        .method("sleep")
        .deadline(Duration::from_millis(200))
        .send::<_, u64>(&2_000u64)
        .await
        .expect_err("slow");
    let took = started.elapsed();
    assert_eq!(err.code(), ErrorCode::Timeout, "{err}");
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_millis(600),
        "{took:?}"
    );

    // A request whose budget is already used up is refused, unrun.
    let raw = connect(&nats.url()).await;
    let mut h = HeaderMap::new();
    h.insert(wire::TIMEOUT_MS, "0");
    let reply = raw
        .request_with_headers(names().api_subject(APP, "sleep"), h, "1".into())
        .await
        .expect("reply");
    assert_eq!(
        reply
            .headers
            .as_ref()
            .and_then(|h| h.get(wire::ERROR))
            .map(|v| v.as_str()),
        Some("timeout")
    );
}

#[tokio::test]
async fn no_responders_are_retried_until_a_server_appears() {
    let nats = support::start_server().await;
    let rpc = caller(&nats.url()).await;
    let started = Instant::now();
    let call = tokio::spawn({
        let rpc = rpc.clone();
        async move {
            rpc.app(APP)
                .method("incr")
                .deadline(Duration::from_secs(3))
                .send::<_, u64>(&1u64)
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n1 = server(&nats.url(), APP, "n1").await;
    n1.serve_api(ApiMode::Exclusive).await.expect("serve");
    let n = call.await.expect("join").expect("retried call succeeds");
    assert_eq!(n, 2);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(1),
        "{took:?}"
    );

    // With nobody ever serving: `unavailable` at the deadline.
    let started = Instant::now();
    let err = rpc
        .app("nobody")
        .method("x")
        .deadline(Duration::from_millis(250))
        .send::<_, u64>(&())
        .await
        .expect_err("unavailable");
    assert_eq!(err.code(), ErrorCode::Unavailable);
    match err {
        RpcError::Unavailable { attempts, .. } => assert!(attempts > 3, "{attempts}"),
        other => panic!("unexpected {other}"),
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(240) && took < Duration::from_millis(500),
        "{took:?}"
    );
}

#[tokio::test]
async fn serving_is_effective_when_serve_returns() {
    let nats = support::start_server().await;
    // A caller that would fail rather than retry.
    let rpc = RpcClient::builder(connect(&nats.url()).await, names())
        .retry_backoff(Duration::from_secs(10), Duration::from_secs(10))
        .default_deadline(Duration::from_secs(2))
        .build()
        .expect("client");
    for i in 0..20 {
        let app = format!("app-{i}");
        let s = server(&nats.url(), &app, "n1").await;
        s.serve_api(ApiMode::Exclusive).await.expect("serve");
        let n: u64 = rpc
            .app(&app)
            .method("incr")
            .send(&1u64)
            .await
            .expect("served at once");
        assert_eq!(n, 2);
        s.serve_partitions([5]).await.expect("serve");
        let who = whoami(rpc.app(&app).method("whoami").partition(5)).await;
        assert_eq!(who, "n1");
        s.shutdown().await;
    }
}

#[tokio::test]
async fn stopping_drains_in_flight_calls_then_refuses() {
    let nats = support::start_server().await;
    let n1 = server(&nats.url(), APP, "n1").await;
    n1.serve_api(ApiMode::Exclusive).await.expect("serve");
    let rpc = caller(&nats.url()).await;
    let slow = tokio::spawn({
        let rpc = rpc.clone();
        async move { rpc.app(APP).method("sleep").send::<_, u64>(&300u64).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    n1.stop_api().await;
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "waited for the call"
    );
    assert_eq!(slow.await.expect("join").expect("completed"), 300);
    let err = rpc
        .app(APP)
        .method("incr")
        .deadline(Duration::from_millis(100))
        .send::<_, u64>(&1u64)
        .await
        .expect_err("no longer served");
    assert_eq!(err.code(), ErrorCode::Unavailable);
    // The instance route still works.
    assert_eq!(
        whoami(rpc.app(APP).method("whoami").instance("n1")).await,
        "n1"
    );
}

#[tokio::test]
async fn dropping_the_server_stops_serving() {
    let nats = support::start_server().await;
    let n1 = server(&nats.url(), APP, "n1").await;
    n1.serve_api(ApiMode::Exclusive).await.expect("serve");
    let rpc = caller(&nats.url()).await;
    let _: u64 = rpc
        .app(APP)
        .method("incr")
        .send(&1u64)
        .await
        .expect("served");
    drop(n1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = rpc
        .app(APP)
        .method("incr")
        .deadline(Duration::from_millis(100))
        .send::<_, u64>(&1u64)
        .await
        .expect_err("stopped");
    assert_eq!(err.code(), ErrorCode::Unavailable);
    let pings = gather(&connect(&nats.url()).await, "$SRV.PING").await;
    assert!(pings.is_empty(), "{pings:?}");
}

#[tokio::test]
async fn drain_is_bounded_and_aborts_late_calls() {
    let nats = support::start_server().await;
    let n1 = server_with(
        &nats.url(),
        APP,
        "n1",
        ServerOptions::default().drain_timeout(Duration::from_millis(100)),
    )
    .await;
    n1.serve_api(ApiMode::Exclusive).await.expect("serve");
    let rpc = caller(&nats.url()).await;
    let slow = tokio::spawn({
        let rpc = rpc.clone();
        async move {
            rpc.app(APP)
                .method("sleep")
                .deadline(Duration::from_secs(1))
                .send::<_, u64>(&5_000u64)
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    n1.stop_api().await;
    let took = started.elapsed();
    assert!(took < Duration::from_millis(400), "{took:?}");
    let err = slow.await.expect("join").expect_err("aborted");
    assert_eq!(err.code(), ErrorCode::Timeout, "{err}");
}

#[tokio::test]
async fn a_dropped_call_is_abandoned() {
    let nats = support::start_server().await;
    let rpc = caller(&nats.url()).await;
    // Retrying against nobody; the caller gives up after 100 ms.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        rpc.app(APP).method("count").send::<_, usize>(&()),
    )
    .await;
    assert!(gave_up.is_err());
    let (n1, ctx) = server_ctx(&nats.url(), APP, "n1", ServerOptions::default()).await;
    n1.serve_api(ApiMode::Exclusive).await.expect("serve");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ctx.counted.load(Ordering::SeqCst), 0, "no retry after drop");
    let n: usize = rpc.app(APP).method("count").send(&()).await.expect("call");
    assert_eq!(n, 1);
}

#[tokio::test]
async fn in_flight_calls_are_bounded() {
    let nats = support::start_server().await;
    let (n1, ctx) = server_ctx(
        &nats.url(),
        APP,
        "n1",
        ServerOptions::default().max_in_flight(2),
    )
    .await;
    n1.serve_api(ApiMode::Exclusive).await.expect("serve");
    let rpc = caller(&nats.url()).await;
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let rpc = rpc.clone();
            tokio::spawn(async move { rpc.app(APP).method("busy").send::<_, ()>(&50u64).await })
        })
        .collect();
    for c in calls {
        c.await.expect("join").expect("call");
    }
    assert_eq!(ctx.max_running.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn trace_and_caller_propagate_through_nested_calls() {
    let nats = support::start_server().await;
    let front = server(&nats.url(), "front", "n1").await;
    front.serve_api(ApiMode::Exclusive).await.expect("serve");
    let back = server(&nats.url(), "back", "n2").await;
    back.serve_api(ApiMode::Exclusive).await.expect("serve");
    let rpc = RpcClient::builder(connect(&nats.url()).await, names())
        .caller_node("cli")
        .build()
        .expect("client");
    let trace = TraceContext::new_root();
    let (own, downstream): (TraceSeen, TraceSeen) = rpc
        .app("front")
        .method("relay")
        .trace(trace)
        .deadline(Duration::from_secs(2))
        .send(&())
        .await
        .expect("relay");
    assert_eq!(own.trace_id, trace.trace_id());
    assert_eq!(own.parent_id, trace.parent_id());
    assert_eq!(own.caller_node.as_deref(), Some("cli"));
    assert_eq!(own.caller_app, None);
    assert_eq!(
        downstream.trace_id,
        trace.trace_id(),
        "same trace downstream"
    );
    assert_ne!(downstream.parent_id, own.parent_id, "new span downstream");
    assert_eq!(downstream.caller_app.as_deref(), Some("front"));
    assert_eq!(downstream.caller_node.as_deref(), Some("n1"));
    assert!(own.remaining_ms <= 2_000);
    assert!(
        downstream.remaining_ms <= own.remaining_ms,
        "the inbound deadline caps the nested call"
    );

    // Without a traceparent the server starts a trace.
    let fresh: TraceSeen = rpc
        .app("back")
        .method("trace")
        .send(&())
        .await
        .expect("trace");
    assert_eq!(fresh.trace_id.len(), 32);
    assert_ne!(fresh.trace_id, trace.trace_id());
}

#[tokio::test]
async fn msgpack_is_negotiated_by_header() {
    let nats = support::start_server().await;
    let n1 = server(&nats.url(), APP, "n1").await;
    n1.serve_api(ApiMode::Exclusive).await.expect("serve");
    let rpc = RpcClient::builder(connect(&nats.url()).await, names())
        .codec(Codec::MsgPack)
        .build()
        .expect("client");
    let n: u64 = rpc
        .app(APP)
        .method("incr")
        .send(&9u64)
        .await
        .expect("msgpack");
    assert_eq!(n, 10);
    let seen: TraceSeen = rpc
        .app(APP)
        .method("trace")
        .send(&())
        .await
        .expect("struct");
    assert_eq!(seen.trace_id.len(), 32);
    let reply = rpc
        .app(APP)
        .method("incr")
        .send_raw(Codec::MsgPack.encode(&1u64).expect("encode"))
        .await
        .expect("raw");
    assert_eq!(reply.codec, Codec::MsgPack);
    assert_eq!(reply.node.as_deref(), Some("n1"));
    assert_eq!(reply.decode::<u64>().expect("decode"), 2);
    // JSON callers of the same server still get JSON.
    let json = caller(&nats.url()).await;
    let reply = json
        .app(APP)
        .method("incr")
        .send_raw(Bytes::from_static(b"1"))
        .await
        .expect("json");
    assert_eq!((reply.codec, &reply.payload[..]), (Codec::Json, &b"2"[..]));
}

#[tokio::test]
async fn plain_nats_request_calls_a_handler() {
    let nats = support::start_server().await;
    let n1 = server(&nats.url(), APP, "n1").await;
    n1.serve_api(ApiMode::Pool).await.expect("serve");
    let raw = connect(&nats.url()).await;
    // What `nats req t._.api.counter.incr 5` sends: no headers at all.
    let reply = raw
        .request(names().api_subject(APP, "incr"), "5".into())
        .await
        .expect("reply");
    assert_eq!(&reply.payload[..], b"6");
    // A JSON success reply is a bare payload, without headers.
    assert!(reply.headers.is_none(), "{:?}", reply.headers);
    // An empty payload decodes as `null`, i.e. `()`.
    let reply = raw
        .request(names().api_subject(APP, "whoami"), Bytes::new())
        .await
        .expect("reply");
    assert_eq!(&reply.payload[..], b"\"n1\"");
}

#[tokio::test]
async fn micro_protocol_lists_the_app() {
    let nats = support::start_server().await;
    let n1 = server(&nats.url(), APP, "n1").await;
    n1.serve_api(ApiMode::Pool).await.expect("serve");
    let _other = server(&nats.url(), "other", "n1").await;
    let rpc = caller(&nats.url()).await;
    for _ in 0..3 {
        let _: u64 = rpc.app(APP).method("incr").send(&1u64).await.expect("call");
    }
    let _ = rpc.app(APP).method("panic").send::<_, u64>(&()).await;

    let raw = connect(&nats.url()).await;
    let pings = gather(&raw, "$SRV.PING").await;
    let names_seen: Vec<String> = pings
        .iter()
        .map(|p| p["name"].as_str().expect("name").to_owned())
        .collect();
    assert!(names_seen.contains(&APP.to_owned()), "{names_seen:?}");
    assert!(names_seen.contains(&"other".to_owned()), "{names_seen:?}");
    let ping = pings.iter().find(|p| p["name"] == APP).expect("ping");
    assert_eq!(ping["type"], "io.nats.micro.v1.ping_response");
    assert_eq!(ping["id"], n1.micro_id());

    let info: serde_json::Value = serde_json::from_slice(
        &raw.request(format!("$SRV.INFO.{APP}"), Bytes::new())
            .await
            .expect("info")
            .payload,
    )
    .expect("json");
    assert_eq!(info["type"], "io.nats.micro.v1.info_response");
    assert_eq!(info["metadata"]["api"], "pool");
    let endpoints: BTreeMap<String, serde_json::Value> = info["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| (e["name"].as_str().expect("name").to_owned(), e.clone()))
        .collect();
    assert!(endpoints.contains_key("incr") && endpoints.contains_key("whoami"));
    assert_eq!(endpoints["incr"]["subject"], "t._.api.counter.incr");
    assert_eq!(endpoints["incr"]["queue_group"], APP);

    let stats: serde_json::Value = serde_json::from_slice(
        &raw.request(format!("$SRV.STATS.{APP}.{}", n1.micro_id()), Bytes::new())
            .await
            .expect("stats")
            .payload,
    )
    .expect("json");
    // The answers parse as async-nats's own micro types (the reference
    // schema that `nats micro` reads).
    let raw_info = raw
        .request(format!("$SRV.INFO.{APP}"), Bytes::new())
        .await
        .expect("info");
    let typed: async_nats::service::Info =
        serde_json::from_slice(&raw_info.payload).expect("micro info schema");
    assert_eq!(typed.name, APP);
    let raw_stats = raw
        .request(format!("$SRV.STATS.{APP}"), Bytes::new())
        .await
        .expect("stats");
    let typed: async_nats::service::Stats =
        serde_json::from_slice(&raw_stats.payload).expect("micro stats schema");
    assert_eq!(typed.id, n1.micro_id());
    let raw_ping = raw
        .request(format!("$SRV.PING.{APP}"), Bytes::new())
        .await
        .expect("ping");
    let typed: async_nats::service::PingResponse =
        serde_json::from_slice(&raw_ping.payload).expect("micro ping schema");
    assert_eq!(typed.version, env!("CARGO_PKG_VERSION"));

    let by_name = |n: &str| {
        stats["endpoints"]
            .as_array()
            .expect("endpoints")
            .iter()
            .find(|e| e["name"] == n)
            .cloned()
            .expect("endpoint")
    };
    assert_eq!(by_name("incr")["num_requests"], 3);
    assert_eq!(by_name("panic")["num_errors"], 1);
    assert!(by_name("panic")["last_error"]
        .as_str()
        .expect("text")
        .contains("boom"));
}

/// Sends a request and gathers every reply for 300 ms.
async fn gather(client: &async_nats::Client, subject: &str) -> Vec<serde_json::Value> {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.expect("sub");
    client
        .publish_with_reply(subject.to_owned(), inbox, Bytes::new())
        .await
        .expect("publish");
    let mut out = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        if msg.status.is_some() {
            break; // no responders
        }
        out.push(serde_json::from_slice(&msg.payload).expect("json"));
    }
    out
}

/// What the `#[cluster::app]` macro generates for a caller, by hand.
struct Counter;

#[derive(Debug, Clone)]
struct CounterClient(AppRef);

impl TypedClient for CounterClient {
    fn from_app(app: AppRef) -> Self {
        CounterClient(app)
    }
    fn app_ref(&self) -> &AppRef {
        &self.0
    }
}

impl RemoteApp for Counter {
    const NAME: &'static str = APP;
    type Client = CounterClient;
}

impl CounterClient {
    async fn incr(&self, by: u64) -> Result<u64, RpcError> {
        self.app_ref().method("incr").send(&by).await
    }
}

#[tokio::test]
async fn typed_client_plumbing() {
    let nats = support::start_server().await;
    let n1 = server(&nats.url(), APP, "n1").await;
    n1.serve_api(ApiMode::Exclusive).await.expect("serve");
    let rpc = caller(&nats.url()).await;
    assert_eq!(rpc.typed::<Counter>().incr(5).await.expect("typed"), 6);
    // Another platform has no such app: unavailable, quickly.
    let err = rpc
        .typed::<Counter>()
        .on_platform("elsewhere")
        .with_deadline(Duration::from_millis(100))
        .incr(1)
        .await
        .expect_err("nobody there");
    assert_eq!(err.code(), ErrorCode::Unavailable);
    let err = rpc
        .typed::<Counter>()
        .on_platform("Bad Name")
        .incr(1)
        .await
        .expect_err("invalid");
    assert!(matches!(err, RpcError::InvalidCall(_)), "{err}");
}

/// Latency of 5000 sequential 100-byte calls, our client + server vs raw
/// async-nats request/reply on the same server. Not a test; run with
/// `cargo test -p cluster-runtime --release --test rpc -- --ignored --nocapture bench`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn bench_rpc_vs_raw() {
    const N: usize = 5000;
    let nats = support::start_server().await;
    let payload: String = "x".repeat(98); // 100 bytes as a JSON string

    // Raw: a plain subscriber that echoes.
    let raw_server = connect(&nats.url()).await;
    let mut sub = raw_server.subscribe("raw.echo").await.expect("sub");
    let replier = raw_server.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Some(reply) = msg.reply {
                let _ = replier.publish(reply, msg.payload).await;
            }
        }
    });
    raw_server.flush().await.expect("flush");

    let echo = Handlers::<()>::new().handle("echo", |_: (), s: String| async move {
        Ok::<_, HandlerError>(s)
    });
    let server = RpcServer::new(connect(&nats.url()).await, names(), "bench", "n1", echo, ())
        .expect("server");
    server.start().await.expect("start");
    server.serve_api(ApiMode::Exclusive).await.expect("serve");

    // Breakdown: a raw echo on an app subject, for our client alone.
    let mut sub2 = raw_server
        .subscribe(names().api_subject("rawecho", "echo"))
        .await
        .expect("sub");
    let replier2 = raw_server.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub2.next().await {
            if let Some(reply) = msg.reply {
                let _ = replier2.publish(reply, msg.payload).await;
            }
        }
    });
    raw_server.flush().await.expect("flush");

    let raw = connect(&nats.url()).await;
    let rpc = RpcClient::builder(connect(&nats.url()).await, names())
        .caller("client", "n2")
        .build()
        .expect("client");
    let app = rpc.app("bench");
    let bytes = Bytes::from(serde_json::to_vec(&payload).expect("json"));
    assert_eq!(bytes.len(), 100);

    fn pct(mut v: Vec<Duration>, p: f64) -> f64 {
        v.sort();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i].as_secs_f64() * 1e6
    }

    let mut raw_samples = Vec::new();
    let mut rpc_samples = Vec::new();
    for round in 0..3 {
        let mut r = Vec::with_capacity(N);
        let mut c = Vec::with_capacity(N);
        for i in 0..N + 500 {
            let t = Instant::now();
            raw.request("raw.echo", bytes.clone()).await.expect("raw");
            let raw_t = t.elapsed();
            let t = Instant::now();
            let back: String = app.method("echo").send(&payload).await.expect("rpc");
            let rpc_t = t.elapsed();
            assert_eq!(back.len(), 98);
            if i >= 500 {
                r.push(raw_t);
                c.push(rpc_t);
            }
        }
        eprintln!(
            "round {round}: raw p50 {:.1} us p99 {:.1} us | rpc p50 {:.1} us p99 {:.1} us | ratio p50 {:.3}",
            pct(r.clone(), 0.5),
            pct(r.clone(), 0.99),
            pct(c.clone(), 0.5),
            pct(c.clone(), 0.99),
            pct(c.clone(), 0.5) / pct(r.clone(), 0.5)
        );
        raw_samples.extend(r);
        rpc_samples.extend(c);
    }
    let (raw50, rpc50) = (pct(raw_samples.clone(), 0.5), pct(rpc_samples.clone(), 0.5));
    eprintln!(
        "{{\"bench\":\"rpc.call\",\"unit\":\"us\",\"p50\":{rpc50:.1},\"p99\":{:.1},\"baseline\":\"raw-nats\",\"baseline_p50\":{raw50:.1},\"ratio_p50\":{:.3}}}",
        pct(rpc_samples, 0.99),
        rpc50 / raw50
    );

    if std::env::var_os("BREAKDOWN").is_some() {
        let mut series: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
        let mut h = HeaderMap::new();
        h.insert(wire::TIMEOUT_MS, "5000");
        h.insert(
            wire::TRACEPARENT,
            TraceContext::new_root().to_header().as_str(),
        );
        h.insert(wire::CALLER_APP, "client");
        h.insert(wire::CALLER_NODE, "n2");
        let api = names().api_subject("bench", "echo");
        for i in 0..N + 500 {
            let t = Instant::now();
            raw.request("raw.echo", bytes.clone()).await.expect("raw");
            let a = t.elapsed();
            let t = Instant::now();
            raw.request_with_headers("raw.echo", h.clone(), bytes.clone())
                .await
                .expect("raw+h");
            let b = t.elapsed();
            let mut h1 = HeaderMap::new();
            h1.insert(wire::TIMEOUT_MS, "5000");
            let t = Instant::now();
            raw.request_with_headers("raw.echo", h1.clone(), bytes.clone())
                .await
                .expect("raw+h1");
            let b1 = t.elapsed();
            h1.insert(
                wire::TRACEPARENT,
                TraceContext::new_root().to_header().as_str(),
            );
            let t = Instant::now();
            raw.request_with_headers("raw.echo", h1.clone(), bytes.clone())
                .await
                .expect("raw+h2");
            let b2 = t.elapsed();
            let mut h3 = HeaderMap::new();
            h3.insert(wire::TIMEOUT_MS, "5000");
            h3.insert(wire::CALLER_APP, "client");
            h3.insert(wire::CALLER_NODE, "n2");
            let t = Instant::now();
            raw.request_with_headers("raw.echo", h3.clone(), bytes.clone())
                .await
                .expect("raw+h3");
            let b3 = t.elapsed();
            let t = Instant::now();
            rpc.app("rawecho")
                .method("echo")
                .send_raw(bytes.clone())
                .await
                .expect("client only");
            let c = t.elapsed();
            let t = Instant::now();
            raw.request_with_headers(api.clone(), h.clone(), bytes.clone())
                .await
                .expect("server only");
            let d = t.elapsed();
            let t = Instant::now();
            raw.request(api.clone(), bytes.clone())
                .await
                .expect("server no headers");
            let e = t.elapsed();
            if i >= 500 {
                for (k, v) in [
                    ("a raw", a),
                    ("b raw+headers", b),
                    ("b1 raw+timeout", b1),
                    ("b2 raw+timeout+traceparent", b2),
                    ("b3 raw+timeout+caller (no trace)", b3),
                    ("c our client, raw server", c),
                    ("d raw client+headers, our server", d),
                    ("e raw client no headers, our server", e),
                ] {
                    series.entry(k).or_default().push(v);
                }
            }
        }
        for (k, v) in series {
            eprintln!("{k}: p50 {:.1} us", pct(v, 0.5));
        }
    }

    // Throughput with 32 calls in flight.
    for kind in ["raw", "rpc", "raw", "rpc"] {
        let started = Instant::now();
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let raw = raw.clone();
                let app = app.clone();
                let payload = payload.clone();
                let bytes = bytes.clone();
                tokio::spawn(async move {
                    for _ in 0..500 {
                        if kind == "raw" {
                            raw.request("raw.echo", bytes.clone()).await.expect("raw");
                        } else {
                            let _: String = app.method("echo").send(&payload).await.expect("rpc");
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("join");
        }
        eprintln!(
            "{kind}: {:.0} calls/s (32 in flight)",
            16_000.0 / started.elapsed().as_secs_f64()
        );
    }
}
