//! Observability against a real nats-server with in-process nodes: audit
//! entries of a failover, `/metrics` from three nodes, health checks that
//! gate readiness and step a singleton down.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use cluster_runtime::app::{App, Mode, Role};
use cluster_runtime::config::Config;
use cluster_runtime::lease::LeaseTiming;
use cluster_runtime::nats_server::http_get;
use cluster_runtime::observe::{AuditEntry, AuditFilter, Check, HealthChange};
use cluster_runtime::platform::Platform;
use cluster_runtime::prometheus::{IntCounter, Opts};
use cluster_testing::{NatsServer, ServerOptions};
use futures::StreamExt;

const APP: &str = "counter";
const WAIT: Duration = Duration::from_secs(20);

fn config(url: &str, platform: &str, node: &str) -> Config {
    let mut c = Config::default();
    c.nats.urls = vec![url.to_owned()];
    c.node = node.to_owned();
    c.platform = platform.into();
    c.health_addr = Some("127.0.0.1:0".parse().expect("addr"));
    c.metrics_addr = Some("127.0.0.1:0".parse().expect("addr"));
    c
}

fn counter() -> cluster_runtime::app::AppBuilder {
    App::builder(APP)
        .mode(Mode::Singleton)
        .lease_ttl(Duration::from_secs(1))
        .handle("incr", |_ctx, by: u64| async move {
            Ok::<_, cluster_runtime::Error>(by + 1)
        })
        .handle("fail", |_ctx, (): ()| async move {
            Err::<(), _>(cluster_runtime::rpc::HandlerError::new("always fails"))
        })
}

async fn start(url: &str, platform: &str, node: &str, app: App) -> Platform {
    Platform::builder()
        .config(config(url, platform, node))
        .node_lease(LeaseTiming::from_ttl(Duration::from_secs(1)).expect("timing"))
        .app(app)
        .start()
        .await
        .expect("start")
}

async fn wait_until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn active(nodes: &[Platform]) -> Option<usize> {
    let act: Vec<usize> = nodes
        .iter()
        .enumerate()
        .filter(|(_, p)| p.app(APP).is_some_and(|c| c.is_active()))
        .map(|(i, _)| i)
        .collect();
    (act.len() == 1).then(|| act[0])
}

fn summary(entries: &[AuditEntry]) -> Vec<(String, u64)> {
    entries
        .iter()
        .map(|e| (e.action.clone(), e.data["epoch"].as_u64().unwrap_or(0)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_produces_audit_entries_in_order() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let since = SystemTime::now();
    let mut nodes = Vec::new();
    for n in ["n1", "n2", "n3"] {
        nodes.push(start(&server.url(), "aud", n, counter().build().expect("app")).await);
    }
    let first = wait_until("one active", async || active(&nodes)).await;
    let ctx = nodes[first].app(APP).expect("ctx");
    let e1 = ctx.epoch().expect("epoch");
    let audit = ctx.audit().clone();
    let election = AuditFilter::new()
        .app(APP)
        .category("election")
        .since(since);
    // Wait until the first acquisition is stored, then mark the time.
    wait_until("leader_acquired stored", async || {
        let got = audit.query(election.clone()).await.expect("query");
        (!got.is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let between = SystemTime::now();
    let mut live = audit
        .stream(AuditFilter::new().app(APP).category("election"))
        .await
        .expect("live stream");

    ctx.stepdown().await.expect("stepdown");
    let second = wait_until("another active", async || {
        active(&nodes).filter(|i| *i != first)
    })
    .await;
    let e2 = nodes[second].app(APP).expect("ctx").epoch().expect("epoch");
    assert!(e2 > e1);

    let entries = wait_until("three election entries", async || {
        let got = audit.query(election.clone()).await.expect("query");
        (got.len() >= 3).then_some(got)
    })
    .await;
    assert_eq!(
        summary(&entries),
        [
            ("election.leader_acquired".to_owned(), e1),
            ("election.leader_lost".to_owned(), e1),
            ("election.leader_acquired".to_owned(), e2),
        ],
        "{entries:#?}"
    );
    let first_node = nodes[first].node().to_owned();
    let second_node = nodes[second].node().to_owned();
    assert_eq!(entries[0].node, first_node);
    assert_eq!(entries[0].data["leader"], first_node.as_str());
    assert_eq!(entries[1].data["leader"], first_node.as_str());
    assert_eq!(entries[2].node, second_node);
    assert!(entries.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(entries.iter().all(|e| e.app.as_deref() == Some(APP)));

    // By time: only the first acquisition was stored before `between`.
    let early = audit
        .query(election.clone().until(between))
        .await
        .expect("query");
    assert_eq!(
        summary(&early),
        [("election.leader_acquired".to_owned(), e1)]
    );
    let late = audit
        .query(
            AuditFilter::new()
                .app(APP)
                .category("election")
                .since(between),
        )
        .await
        .expect("query");
    assert_eq!(late.len(), 2);
    // By node.
    let by_second = audit
        .query(election.clone().node(&second_node))
        .await
        .expect("query");
    assert!(by_second.iter().all(|e| e.node == second_node));
    assert!(by_second
        .iter()
        .any(|e| e.action == "election.leader_acquired"));

    // The live stream saw the hand-over as it happened.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let e = tokio::time::timeout(WAIT, live.next())
            .await
            .expect("live entry")
            .expect("stream open");
        seen.push((e.action, e.data["epoch"].as_u64().unwrap_or(0)));
    }
    assert_eq!(
        seen,
        [
            ("election.leader_lost".to_owned(), e1),
            ("election.leader_acquired".to_owned(), e2)
        ]
    );

    // Membership: one `member.joined` per node, however many observed it.
    let members = wait_until("three joins", async || {
        let got = audit
            .query(
                AuditFilter::new()
                    .platform_wide()
                    .category("member")
                    .since(since),
            )
            .await
            .expect("query");
        (got.len() >= 3).then_some(got)
    })
    .await;
    let mut joined: Vec<&str> = members
        .iter()
        .filter(|e| e.action == "member.joined")
        .map(|e| e.data["member"].as_str().unwrap_or(""))
        .collect();
    joined.sort();
    assert_eq!(joined, ["n1", "n2", "n3"], "{members:#?}");
    assert!(members.iter().all(|e| e.app.is_none()));

    // User entries: reserved categories are refused, others stored.
    assert!(audit.log("election.fake", &()).await.is_err());
    assert!(audit.log("noaction", &()).await.is_err());
    let seq = audit
        .log("order.refunded", &serde_json::json!({"order": 7}))
        .await
        .expect("log");
    let orders = audit
        .query(AuditFilter::new().category("order"))
        .await
        .expect("query");
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0].seq, seq);
    assert_eq!(orders[0].data["order"], 7);
    assert_eq!(orders[0].category, "order");

    let stopping = nodes.remove(first);
    stopping.shutdown().await;
    let stopped = wait_until("app.stopped", async || {
        let got = audit
            .query(
                AuditFilter::new()
                    .app(APP)
                    .category("app")
                    .node(&first_node),
            )
            .await
            .expect("query");
        got.iter().any(|e| e.action == "app.stopped").then_some(got)
    })
    .await;
    assert_eq!(stopped[0].action, "app.started");
    for p in nodes {
        p.shutdown().await;
    }
}

/// A sample of the Prometheus text format: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the Prometheus text exposition format strictly enough to reject
/// anything malformed: `# HELP`/`# TYPE` comments and `name{labels} value`.
fn parse_prometheus(text: &str) -> Result<Vec<Sample>, String> {
    let is_name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !s.starts_with(|c: char| c.is_ascii_digit())
    };
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(n), _) if is_name(n) => {}
                (Some("TYPE"), Some(n), Some(t))
                    if is_name(n)
                        && ["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) => {
                }
                _ => return Err(format!("bad comment line `{line}`")),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| format!("no value in `{line}`"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| format!("bad value in `{line}`"))?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .ok_or_else(|| format!("unclosed labels in `{line}`"))?;
                let mut labels = BTreeMap::new();
                for pair in body.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or_else(|| format!("bad label in `{line}`"))?;
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .ok_or_else(|| format!("unquoted label in `{line}`"))?;
                    if !is_name(k) {
                        return Err(format!("bad label name in `{line}`"));
                    }
                    labels.insert(k.to_owned(), v.to_owned());
                }
                (name, labels)
            }
        };
        if !is_name(name) {
            return Err(format!("bad metric name in `{line}`"));
        }
        out.push((name.to_owned(), labels, value));
    }
    Ok(out)
}

fn sum(samples: &[Sample], name: &str, filter: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, labels, _)| {
            n == name
                && filter
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

async fn scrape(addr: std::net::SocketAddr) -> Vec<Sample> {
    let (status, body) = http_get(addr.port(), "/metrics")
        .await
        .expect("GET /metrics");
    assert_eq!(status, 200);
    parse_prometheus(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

#[test]
fn prometheus_parser_rejects_garbage() {
    assert!(parse_prometheus("# TYPE a gauge\na{b=\"c\"} 1\na 2.5\n").is_ok());
    assert!(parse_prometheus("a{b=c} 1").is_err());
    assert!(parse_prometheus("a b c").is_err());
    assert!(parse_prometheus("# TYPE a thing").is_err());
    assert!(parse_prometheus("1a 1").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_from_three_nodes_parse_and_gc_leader_sums_to_one() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let mut nodes = Vec::new();
    for n in ["n1", "n2", "n3"] {
        nodes.push(start(&server.url(), "met", n, counter().build().expect("app")).await);
    }
    // Users register their own metrics on the same registry.
    let orders = IntCounter::with_opts(Opts::new("shop_orders_total", "Orders")).expect("metric");
    nodes[0]
        .app(APP)
        .expect("ctx")
        .metrics()
        .registry()
        .register(Box::new(orders.clone()))
        .expect("register");
    orders.inc_by(3);

    let first = wait_until("one active", async || active(&nodes)).await;
    let n: u64 = nodes[(first + 1) % 3]
        .app(APP)
        .expect("ctx")
        .call(APP)
        .method("incr")
        .send(&41u64)
        .await
        .expect("call");
    assert_eq!(n, 42);
    let failed = nodes[(first + 1) % 3]
        .app(APP)
        .expect("ctx")
        .call(APP)
        .method("fail")
        .send::<_, ()>(&())
        .await
        .expect_err("handler error");
    assert_eq!(failed.code().as_str(), "handler");

    let addrs: Vec<_> = nodes
        .iter()
        .map(|p| p.metrics_addr().expect("metrics addr"))
        .collect();
    let settled = wait_until("gc_leader sums to 1 and 3 members everywhere", async || {
        let mut all = Vec::new();
        for a in &addrs {
            all.push(scrape(*a).await);
        }
        let leaders: f64 = all
            .iter()
            .map(|s| sum(s, "gc_leader", &[("app", APP)]))
            .sum();
        let members_ok = all
            .iter()
            .all(|s| sum(s, "gc_members_total", &[("platform", "met")]) == 3.0);
        (leaders == 1.0 && members_ok).then_some(all)
    })
    .await;
    let active_node = nodes[first].node().to_owned();
    assert_eq!(
        sum(
            &settled[first],
            "gc_leader",
            &[("app", APP), ("node", &active_node), ("platform", "met")]
        ),
        1.0
    );
    for s in &settled {
        assert!(sum(s, "gc_election_epoch", &[("app", APP)]) >= 1.0);
        assert_eq!(sum(s, "gc_health", &[("check", "nats")]), 1.0);
    }
    assert_eq!(sum(&settled[0], "shop_orders_total", &[]), 3.0);
    // Both sides of the call were measured.
    let caller = &settled[(first + 1) % 3];
    assert_eq!(
        sum(
            caller,
            "gc_rpc_duration_seconds_count",
            &[("app", APP), ("method", "incr"), ("side", "client")]
        ),
        1.0
    );
    assert_eq!(
        sum(
            &settled[first],
            "gc_rpc_duration_seconds_count",
            &[("app", APP), ("method", "incr"), ("side", "server")]
        ),
        1.0
    );
    // Errors are counted by code on both sides.
    let errors = |s: &[Sample], side: &str| {
        sum(
            s,
            "gc_rpc_errors_total",
            &[
                ("app", APP),
                ("method", "fail"),
                ("side", side),
                ("code", "handler"),
            ],
        )
    };
    assert_eq!(errors(caller, "client"), 1.0);
    assert_eq!(errors(&settled[first], "server"), 1.0);
    // /metrics is also served on the health address.
    let health = nodes[0].health_addr().expect("health addr");
    let (status, body) = http_get(health.port(), "/metrics").await.expect("GET");
    assert_eq!(status, 200);
    assert!(body.contains("gc_leader"));

    // After a hand-over the sum is still 1.
    nodes[first]
        .app(APP)
        .expect("ctx")
        .stepdown()
        .await
        .expect("stepdown");
    wait_until("new active", async || {
        active(&nodes).filter(|i| *i != first)
    })
    .await;
    wait_until("gc_leader sums to 1 after hand-over", async || {
        let mut total = 0.0;
        for a in &addrs {
            total += sum(&scrape(*a).await, "gc_leader", &[("app", APP)]);
        }
        let on_old = sum(&scrape(addrs[first]).await, "gc_leader", &[("app", APP)]);
        (total == 1.0 && on_old == 0.0).then_some(())
    })
    .await;
    for p in nodes {
        p.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_critical_check_unreadies_the_node_and_steps_the_singleton_down() {
    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let changes: Arc<Mutex<Vec<(String, HealthChange)>>> = Arc::default();
    let app = |changes: Arc<Mutex<Vec<(String, HealthChange)>>>| {
        counter()
            .step_down_on_critical(true)
            .on_health_change(move |ctx, change| {
                let changes = changes.clone();
                async move {
                    changes
                        .lock()
                        .expect("changes")
                        .push((ctx.node().to_owned(), change));
                    Ok(())
                }
            })
            .build()
            .expect("app")
    };
    let nodes = vec![
        start(&server.url(), "hc", "n1", app(changes.clone())).await,
        start(&server.url(), "hc", "n2", app(changes.clone())).await,
    ];
    let first = wait_until("one active", async || active(&nodes)).await;
    let other = 1 - first;
    wait_until("standby ready", async || {
        (nodes[other].app(APP).expect("ctx").role() == Role::Standby).then_some(())
    })
    .await;
    let health_port = nodes[first].health_addr().expect("addr").port();
    wait_until("ready", async || {
        (http_get(health_port, "/ready").await.ok()?.0 == 200).then_some(())
    })
    .await;

    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let f = failing.clone();
    nodes[first].app(APP).expect("ctx").health().register(
        "db",
        Check::new(move || {
            let fail = f.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                if fail {
                    Err("db unreachable")
                } else {
                    Ok(())
                }
            }
        })
        .interval(Duration::from_millis(50))
        .critical(),
    );
    // The active steps down and the healthy node takes over.
    wait_until("hand-over to the healthy node", async || {
        active(&nodes).filter(|i| *i == other)
    })
    .await;
    let (status, body) = http_get(health_port, "/ready").await.expect("ready");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("counter/db"), "{body}");
    let (_, status_doc) = http_get(health_port, "/status").await.expect("status");
    let doc: serde_json::Value = serde_json::from_str(&status_doc).expect("json");
    assert_eq!(doc["checks"]["counter/db"]["ok"], false);
    assert_eq!(doc["checks"]["counter/db"]["critical"], true);
    assert_eq!(doc["checks"]["counter/db"]["message"], "db unreachable");
    assert_eq!(doc["checks"]["nats"]["ok"], true);
    assert_eq!(doc["checks"][APP]["ok"], true);
    let failing_node = nodes[first].node().to_owned();
    wait_until("on_health_change fired", async || {
        changes
            .lock()
            .expect("changes")
            .iter()
            .any(|(n, c)| *n == failing_node && c.check == "counter/db" && !c.ok && c.critical)
            .then_some(())
    })
    .await;

    // Healthy again: ready again.
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    wait_until("ready again", async || {
        (http_get(health_port, "/ready").await.ok()?.0 == 200).then_some(())
    })
    .await;
    for p in nodes {
        p.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_failover_is_audited_once_by_the_observers() {
    use cluster_runtime::naming::Names;
    use cluster_runtime::observe::{Audit, AuditOptions, Metrics};
    use cluster_testing::node::{NodeSpec, Nodes};

    let server = NatsServer::start(ServerOptions::default())
        .await
        .expect("nats");
    let url = server.url();
    let bin = env!("CARGO_BIN_EXE_cluster-test-node");
    let specs = ["k1", "k2", "k3"]
        .iter()
        .map(|id| {
            let mut s = NodeSpec::new(bin, id, &url);
            s.platform = "crash".into();
            s.tick_ms = 0;
            s
        })
        .collect();
    let mut nodes = Nodes::start(specs).await.expect("nodes");
    let old = nodes.wait_for_active(APP, WAIT).await.expect("active");
    nodes
        .wait_until(WAIT, || {
            (nodes.with_role(APP, Role::Standby).len() == 2).then_some(())
        })
        .await
        .expect("two standbys");

    let client = async_nats::connect(&url).await.expect("client");
    let js = async_nats::jetstream::new(client.clone());
    let names = Names::new("crash").expect("names");
    let audit = Audit::start(
        &client,
        &js,
        &names,
        "tester",
        Metrics::new("crash").expect("metrics"),
        &AuditOptions::default(),
        1,
    )
    .await
    .expect("audit")
    .scoped(None);

    nodes.get(&old).expect("active node").kill();
    let new = nodes
        .wait_until(WAIT, || {
            let active = nodes.with_role(APP, Role::Active);
            (active.len() == 1 && active[0] != old).then(|| active[0].clone())
        })
        .await
        .expect("new active");

    let entries = wait_until("three election entries", async || {
        let got = audit
            .query(AuditFilter::new().app(APP).category("election"))
            .await
            .expect("query");
        (got.len() >= 3).then_some(got)
    })
    .await;
    let actions: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| {
            (
                e.action.as_str(),
                e.data["leader"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("election.leader_acquired", old.as_str()),
            ("election.leader_lost", old.as_str()),
            ("election.leader_acquired", new.as_str()),
        ],
        "{entries:#?}"
    );
    // The killed node could not report its loss: an observer did, once.
    assert_eq!(entries[1].data["reported_as"], "observed");
    assert_ne!(entries[1].node, old);
    assert_eq!(entries[1].data["epoch"], entries[0].data["epoch"]);
    assert!(entries[2].data["epoch"].as_u64() > entries[0].data["epoch"].as_u64());

    // Its record expires: one `member.left`, whoever saw it.
    let left = wait_until("member.left", async || {
        let got = audit
            .query(AuditFilter::new().platform_wide().category("member"))
            .await
            .expect("query");
        let left: Vec<AuditEntry> = got
            .into_iter()
            .filter(|e| e.action == "member.left")
            .collect();
        (!left.is_empty()).then_some(left)
    })
    .await;
    // Give a second observer's duplicate time to arrive (and be dropped).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = audit
        .query(AuditFilter::new().platform_wide().category("member"))
        .await
        .expect("query");
    let left_again = again.iter().filter(|e| e.action == "member.left").count();
    assert_eq!(left.len(), 1);
    assert_eq!(left_again, 1, "{again:#?}");
    assert_eq!(left[0].data["member"], old.as_str());
    nodes.history().check(APP).expect("invariants");
}
