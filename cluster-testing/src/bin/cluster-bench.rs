//! Benchmarks (not tests): `cluster-bench <scenario>` prints one JSON object
//! per line. Run through `scripts/bench.sh <scenario>`.
//!
//! Scenarios:
//! - `failover`: graceful hand-over (stepdown → new `on_active` started) and
//!   crash failover (SIGKILL of the active process → new `on_active`), with
//!   node processes on a real nats-server.
//! - `rpc`: typed calls through the platform vs raw async-nats
//!   request/reply on the same server (latency, throughput), and caller
//!   errors across graceful hand-overs.
//! - `data`: `ctx.kv().put` and an uncontended lock cycle (acquire +
//!   release) against raw async-nats KV calls (`put`; `create` + `delete`)
//!   on the same server, interleaved in the same run.
//! - `ring`: a 256-partition ring on 5 node processes: hand-off after a
//!   join, a graceful leave and a SIGKILL (until every partition is owned
//!   and served again), partitions moved per join, instants with two owners
//!   (invariant checker), and the control-plane write rate.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cluster_runtime::clock::monotonic_ns;
use cluster_runtime::naming::Names;
use cluster_runtime::platform::StepDownRequest;
use cluster_testing::node::{NodeEvent, NodeSpec, Nodes};
use cluster_testing::{NatsServer, ServerOptions};

const APP: &str = "counter";
const WAIT: Duration = Duration::from_secs(30);

fn main() -> ExitCode {
    let scenario = std::env::args().nth(1).unwrap_or_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match scenario.as_str() {
            "failover" => failover().await,
            "rpc" => rpc().await,
            "data" => data().await,
            "safety" => safety().await,
            "ring" => ring::run().await,
            other => Err(format!(
                "unknown scenario `{other}`; available: failover, rpc, data, ring, safety"
            )),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn node_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = exe.with_file_name("cluster-test-node");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: build the cluster-testing binaries first",
            bin.display()
        ))
    }
}

/// (p50, p99) of `samples` in ms, nearest-rank.
fn percentiles(samples: &mut [f64]) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let i = ((p / 100.0) * samples.len() as f64).ceil() as usize;
        samples[i.clamp(1, samples.len()) - 1]
    };
    (rank(50.0), rank(99.0))
}

fn round(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// The time (ns) at which a node other than `old` started `on_active` after
/// `since`.
async fn next_on_active(nodes: &Nodes, old: &str, since: u64) -> Result<(String, u64), String> {
    nodes
        .wait_until(WAIT, || {
            nodes.nodes.iter().filter(|n| n.id() != old).find_map(|n| {
                n.current_events().into_iter().find_map(|e| match e {
                    NodeEvent::Hook { hook, t_ns, .. } if hook == "on_active" && t_ns > since => {
                        Some((n.id().to_owned(), t_ns))
                    }
                    _ => None,
                })
            })
        })
        .await
        .ok_or_else(|| format!("no new on_active within {WAIT:?}: {:?}", nodes.roles(APP)))
}

async fn failover() -> Result<(), String> {
    let bin = node_binary()?;
    let server = NatsServer::start(ServerOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let url = server.url();
    let ttl_secs = 1;
    let specs = |ids: &[&str]| -> Vec<NodeSpec> {
        ids.iter()
            .map(|id| {
                let mut s = NodeSpec::new(&bin, id, &url);
                s.platform = "bench".into();
                s.tick_ms = 0;
                s.lease_ttl_secs = ttl_secs;
                s
            })
            .collect()
    };

    // Graceful: stepdown request → another node's on_active.
    let nodes = Nodes::start(specs(&["g1", "g2", "g3"])).await?;
    let client = async_nats::connect(url.as_str())
        .await
        .map_err(|e| e.to_string())?;
    let names = Names::new("bench").map_err(|e| e.to_string())?;
    let mut graceful = Vec::new();
    for _ in 0..20 {
        let old = nodes.wait_for_active(APP, WAIT).await?;
        // Every other node must be standing by, so the measurement is a
        // hand-over, not a start-up.
        nodes
            .wait_until(WAIT, || {
                (nodes.with_role(APP, cluster_runtime::Role::Standby).len() == 2).then_some(())
            })
            .await
            .ok_or("standbys not ready")?;
        let body =
            serde_json::to_vec(&StepDownRequest { app: APP.into() }).map_err(|e| e.to_string())?;
        let t0 = monotonic_ns();
        client
            .request(names.control_subject("stepdown"), body.into())
            .await
            .map_err(|e| format!("stepdown request: {e}"))?;
        let (_, t1) = next_on_active(&nodes, &old, t0).await?;
        graceful.push((t1 - t0) as f64 / 1e6);
    }
    nodes.history().check(APP)?;
    drop(nodes);
    let (p50, p99) = percentiles(&mut graceful);
    println!(
        "{}",
        serde_json::json!({"bench": "failover.graceful", "unit": "ms", "p50": round(p50), "p99": round(p99),
            "trials": graceful.len(), "target_p99": 100.0})
    );

    // Crash: SIGKILL of the active process → another node's on_active.
    let mut nodes = Nodes::start(specs(&["k1", "k2", "k3"])).await?;
    let mut crash = Vec::new();
    for _ in 0..10 {
        let old = nodes.wait_for_active(APP, WAIT).await?;
        nodes
            .wait_until(WAIT, || {
                (nodes.with_role(APP, cluster_runtime::Role::Standby).len() == 2).then_some(())
            })
            .await
            .ok_or("standbys not ready")?;
        let node = nodes.get(&old).ok_or("active node vanished")?;
        let t0 = node.kill();
        let (_, t1) = next_on_active(&nodes, &old, t0).await?;
        crash.push((t1 - t0) as f64 / 1e6);
        let node = nodes.get(&old).ok_or("node vanished")?;
        node.restart().map_err(|e| e.to_string())?;
        node.wait_ready(WAIT).await?;
    }
    nodes.history().check(APP)?;
    let (p50, p99) = percentiles(&mut crash);
    let ttl_ms = ttl_secs * 1000;
    println!(
        "{}",
        serde_json::json!({"bench": "failover.crash", "unit": "ms", "p50": round(p50), "p99": round(p99),
            "ttl_ms": ttl_ms, "trials": crash.len(), "target_p99": ttl_ms + 400})
    );
    Ok(())
}

/// Starts an in-process node of platform `bench` serving the singleton app
/// `echo` (method `echo` returns its argument).
async fn echo_node(url: &str, node: &str) -> Result<cluster_runtime::Platform, String> {
    let mut config = cluster_runtime::Config::default();
    config.nats.urls = vec![url.to_owned()];
    config.platform = "bench".into();
    config.node = node.into();
    config.health_addr = None;
    let app = cluster_runtime::App::builder("echo")
        .lease_ttl(Duration::from_secs(1))
        .handle("echo", |_ctx, payload: String| async move {
            Ok::<_, cluster_runtime::Error>(payload)
        })
        .build()
        .map_err(|e| e.to_string())?;
    cluster_runtime::Platform::builder()
        .config(config)
        .app(app)
        .start()
        .await
        .map_err(|e| e.to_string())
}

async fn wait_active(nodes: &[cluster_runtime::Platform]) -> Result<usize, String> {
    for _ in 0..2000 {
        if let Some(i) = nodes
            .iter()
            .position(|p| p.app("echo").is_some_and(|c| c.is_active()))
        {
            return Ok(i);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err("no active echo node".into())
}

/// Sequential latencies (µs) of `n` calls of `a` and `n` calls of `b`,
/// interleaved call by call so that load from anything else on the machine
/// hits both sides alike.
async fn interleaved_latencies<A, FA, B, FB>(
    n: usize,
    mut a: A,
    mut b: B,
) -> Result<(Vec<f64>, Vec<f64>), String>
where
    A: FnMut() -> FA,
    FA: std::future::Future<Output = Result<(), String>>,
    B: FnMut() -> FB,
    FB: std::future::Future<Output = Result<(), String>>,
{
    let (mut la, mut lb) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let start = std::time::Instant::now();
        a().await?;
        la.push(start.elapsed().as_secs_f64() * 1e6);
        let start = std::time::Instant::now();
        b().await?;
        lb.push(start.elapsed().as_secs_f64() * 1e6);
    }
    Ok((la, lb))
}

/// Calls completed per second with `in_flight` concurrent callers for `for_`.
async fn throughput<F, Fut>(in_flight: usize, for_: Duration, call: F) -> Result<f64, String>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let end = tokio::time::Instant::now() + for_;
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while tokio::time::Instant::now() < end {
                call().await?;
                done += 1;
            }
            Ok::<u64, String>(done)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.map_err(|e| e.to_string())??;
    }
    Ok(total as f64 / for_.as_secs_f64())
}

/// Throughput of `a` and `b` (calls/s), measured in alternating one-second
/// windows (`seconds` each) so both see the same background load.
async fn interleaved_throughput<A, FA, B, FB>(
    in_flight: usize,
    seconds: u32,
    a: A,
    b: B,
) -> Result<(f64, f64), String>
where
    A: Fn() -> FA + Clone + Send + 'static,
    FA: std::future::Future<Output = Result<(), String>> + Send,
    B: Fn() -> FB + Clone + Send + 'static,
    FB: std::future::Future<Output = Result<(), String>> + Send,
{
    let (mut ta, mut tb) = (0.0, 0.0);
    for _ in 0..seconds {
        ta += throughput(in_flight, Duration::from_secs(1), a.clone()).await?;
        tb += throughput(in_flight, Duration::from_secs(1), b.clone()).await?;
    }
    Ok((ta / f64::from(seconds), tb / f64::from(seconds)))
}

async fn rpc() -> Result<(), String> {
    use futures::StreamExt;
    let server = NatsServer::start(ServerOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let url = server.url();
    let nodes = vec![echo_node(&url, "e1").await?];
    wait_active(&nodes).await?;

    // The baseline: a raw async-nats responder and raw requests, same server,
    // same process, same payload.
    let responder = async_nats::connect(url.as_str())
        .await
        .map_err(|e| e.to_string())?;
    let mut sub = responder
        .subscribe("bench.raw")
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Some(reply) = msg.reply {
                let _ = responder.publish(reply, msg.payload).await;
            }
        }
    });
    let caller = async_nats::connect(url.as_str())
        .await
        .map_err(|e| e.to_string())?;
    let rpc = cluster_runtime::rpc::RpcClient::new(
        caller.clone(),
        Names::new("bench").map_err(|e| e.to_string())?,
    );

    for (size, label) in [(100usize, "100B"), (4096, "4KiB")] {
        // JSON string payload of `size` bytes on the wire (quotes included).
        let text = "x".repeat(size - 2);
        let raw_payload = bytes::Bytes::from(serde_json::to_vec(&text).map_err(|e| e.to_string())?);
        let n = 5000;
        // Warm both paths first.
        for _ in 0..200 {
            caller
                .request("bench.raw", raw_payload.clone())
                .await
                .map_err(|e| e.to_string())?;
            let _: String = rpc
                .app("echo")
                .method("echo")
                .send(&text)
                .await
                .map_err(|e| e.to_string())?;
        }
        let (mut raw, mut ours) = interleaved_latencies(
            n,
            || {
                let (caller, p) = (caller.clone(), raw_payload.clone());
                async move {
                    caller
                        .request("bench.raw", p)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            },
            || {
                let (rpc, text) = (rpc.clone(), text.clone());
                async move {
                    rpc.app("echo")
                        .method("echo")
                        .send::<String, String>(&text)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                }
            },
        )
        .await?;
        let (p50, p99) = percentiles(&mut ours);
        let (b50, b99) = percentiles(&mut raw);
        let bench = if size == 100 {
            "rpc.call".to_owned()
        } else {
            format!("rpc.call_{label}")
        };
        println!(
            "{}",
            serde_json::json!({"bench": bench, "unit": "us", "payload": label, "calls": n,
                "p50": round(p50), "p99": round(p99), "baseline": "raw-nats",
                "baseline_p50": round(b50), "baseline_p99": round(b99), "ratio_p50": round(p50 / b50),
                "target_ratio_p50": 1.15})
        );
        if size == 100 {
            let (raw_tput, our_tput) = interleaved_throughput(
                32,
                5,
                {
                    let (caller, p) = (caller.clone(), raw_payload.clone());
                    move || {
                        let (caller, p) = (caller.clone(), p.clone());
                        async move {
                            caller
                                .request("bench.raw", p)
                                .await
                                .map(|_| ())
                                .map_err(|e| e.to_string())
                        }
                    }
                },
                {
                    let (rpc, text) = (rpc.clone(), text.clone());
                    move || {
                        let (rpc, text) = (rpc.clone(), text.clone());
                        async move {
                            rpc.app("echo")
                                .method("echo")
                                .send::<String, String>(&text)
                                .await
                                .map(|_| ())
                                .map_err(|e| e.to_string())
                        }
                    }
                },
            )
            .await?;
            println!(
                "{}",
                serde_json::json!({"bench": "rpc.throughput", "unit": "req/s", "in_flight": 32, "seconds": 5,
                    "value": our_tput.round(), "baseline": raw_tput.round(), "ratio": round(our_tput / raw_tput),
                    "target_ratio": 0.85})
            );
        }
    }

    // Errors seen by a continuous caller across 10 graceful hand-overs.
    let mut nodes = nodes;
    nodes.push(echo_node(&url, "e2").await?);
    nodes.push(echo_node(&url, "e3").await?);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let calls = tokio::spawn({
        let (rpc, stop) = (rpc.clone(), stop.clone());
        async move {
            let (mut ok, mut errors) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                match rpc
                    .app("echo")
                    .method("echo")
                    .send::<&str, String>(&"ping")
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(_) => errors += 1,
                }
            }
            (ok, errors)
        }
    });
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let i = wait_active(&nodes).await?;
        let ctx = nodes[i].app("echo").ok_or("no echo app")?;
        let epoch = ctx.epoch();
        ctx.stepdown().await.map_err(|e| e.to_string())?;
        // Wait for another node to be active with a newer epoch.
        for _ in 0..2000 {
            let moved = nodes.iter().enumerate().any(|(j, p)| {
                j != i
                    && p.app("echo")
                        .is_some_and(|c| c.is_active() && c.epoch() > epoch)
            });
            if moved {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, errors) = calls.await.map_err(|e| e.to_string())?;
    println!(
        "{}",
        serde_json::json!({"bench": "rpc.failover_errors", "value": errors, "calls": ok + errors,
            "hand_overs": 10, "target": 0})
    );
    for p in nodes {
        p.shutdown().await;
    }
    Ok(())
}

/// Samples per figure, taken in interleaved blocks after a warm-up.
const DATA_SAMPLES: usize = 3000;
const DATA_BLOCK: usize = 100;
const DATA_WARMUP: usize = 300;

/// (p50, p99) in µs of `samples` (seconds).
fn micros(samples: &mut [f64]) -> (f64, f64) {
    let (p50, p99) = percentiles(samples);
    (p50 * 1e6, p99 * 1e6)
}

fn data_line(bench: &str, ours: &mut [f64], raw: &mut [f64], target: f64) {
    let (p50, p99) = micros(ours);
    let (b50, b99) = micros(raw);
    println!(
        "{}",
        serde_json::json!({"bench": bench, "unit": "us", "p50": round(p50), "p99": round(p99),
            "baseline": "raw-async-nats", "baseline_p50": round(b50), "baseline_p99": round(b99),
            "ratio_p50": round(p50 / b50), "target_ratio_p50": target, "samples": ours.len()})
    );
}

async fn data() -> Result<(), String> {
    use cluster_runtime::app::{App, Mode};
    use cluster_runtime::config::Config;
    use cluster_runtime::platform::Platform;
    use std::time::Instant;

    let server = NatsServer::start(ServerOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut config = Config::default();
    config.nats.urls = vec![server.url()];
    config.node = "b1".into();
    config.platform = "bench".into();
    config.health_addr = None;
    let platform = Platform::builder()
        .config(config)
        .app(
            App::builder("data")
                .mode(Mode::Spread)
                .build()
                .map_err(|e| e.to_string())?,
        )
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let ctx = platform.app("data").ok_or("no app context")?;
    let kv = ctx.kv().clone();
    kv.open().await.map_err(|e| e.to_string())?;
    let lock = ctx.lock("bench").map_err(|e| e.to_string())?;

    // The baseline: its own connection, buckets configured like ours.
    let client = async_nats::connect(server.url())
        .await
        .map_err(|e| e.to_string())?;
    let js = async_nats::jetstream::new(client);
    let raw_kv = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "raw_data".into(),
            history: 10,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let raw_lock = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "raw_coord".into(),
            history: 1,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;

    let value = bytes::Bytes::from(vec![b'x'; 100]);
    let (mut ours, mut raw) = put_samples(&kv, &raw_kv).await?;
    data_line("kv.put", &mut ours, &mut raw, 1.2);

    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    let mut i = 0usize;
    while ours.len() < DATA_SAMPLES {
        for _ in 0..DATA_BLOCK {
            i += 1;
            let t = Instant::now();
            let guard = lock
                .try_acquire()
                .await
                .map_err(|e| e.to_string())?
                .ok_or("uncontended lock was held")?;
            guard.release().await.map_err(|e| e.to_string())?;
            let ours_s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            raw_lock
                .create("bench", value.slice(..8))
                .await
                .map_err(|e| e.to_string())?;
            raw_lock.delete("bench").await.map_err(|e| e.to_string())?;
            let raw_s = t.elapsed().as_secs_f64();
            if i > DATA_WARMUP {
                ours.push(ours_s);
                raw.push(raw_s);
            }
        }
    }
    data_line("lock.cycle", &mut ours, &mut raw, 1.3);
    platform.shutdown().await;
    Ok(())
}

/// Interleaved 100-byte puts through our `Kv` and a raw async-nats store,
/// after a warm-up: (ours, raw) latencies in seconds.
async fn put_samples(
    kv: &cluster_runtime::kv::Kv,
    raw_kv: &async_nats::jetstream::kv::Store,
) -> Result<(Vec<f64>, Vec<f64>), String> {
    use std::time::Instant;
    let value = bytes::Bytes::from(vec![b'x'; 100]);
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    let mut i = 0usize;
    while ours.len() < DATA_SAMPLES {
        for _ in 0..DATA_BLOCK {
            let key = format!("k.{}", i % 64);
            i += 1;
            let t = Instant::now();
            kv.put(&key, value.clone())
                .await
                .map_err(|e| e.to_string())?;
            let ours_s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            raw_kv
                .put(&key, value.clone())
                .await
                .map_err(|e| e.to_string())?;
            let raw_s = t.elapsed().as_secs_f64();
            if i > DATA_WARMUP {
                ours.push(ours_s);
                raw.push(raw_s);
            }
        }
    }
    Ok((ours, raw))
}

/// `safety`: a singleton's fenced `ctx.kv().put` (epoch-record check on the
/// server) beside a raw async-nats put on the same server, interleaved.
async fn safety() -> Result<(), String> {
    use cluster_runtime::app::{App, Mode};
    use cluster_runtime::config::Config;
    use cluster_runtime::platform::Platform;
    use std::time::Instant;
    let server = NatsServer::start(ServerOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut config = Config::default();
    config.nats.urls = vec![server.url()];
    config.node = "b1".into();
    config.platform = "bench".into();
    config.health_addr = None;
    let platform = Platform::builder()
        .config(config)
        .app(
            App::builder("fenced")
                .mode(Mode::Singleton)
                .build()
                .map_err(|e| e.to_string())?,
        )
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let ctx = platform.app("fenced").ok_or("no app context")?;
    let until = Instant::now() + Duration::from_secs(20);
    while !ctx.is_active() {
        if Instant::now() > until {
            return Err("the singleton did not become active".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let kv = ctx.kv().clone();
    if !kv.is_fenced() {
        return Err("a singleton's kv should be fenced".into());
    }
    let client = async_nats::connect(server.url())
        .await
        .map_err(|e| e.to_string())?;
    let js = async_nats::jetstream::new(client);
    let raw_kv = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "raw_fenced".into(),
            history: 10,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let (mut ours, mut raw) = put_samples(&kv, &raw_kv).await?;
    data_line("kv.fenced_put", &mut ours, &mut raw, 1.1);
    platform.shutdown().await;
    Ok(())
}

mod ring {
    //! The `ring` scenario. Every action starts from a converged ring of 5
    //! members: a graceful leave (SIGTERM), a join of a new node, a SIGKILL,
    //! and another join. "Converged" = every partition owned and served by
    //! exactly its desired owner, from the nodes' ownership events; a
    //! hand-off's time runs from the action to the instant the last moved
    //! partition was served by its new owner.

    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    use cluster_runtime::app::Role;
    use cluster_runtime::clock::monotonic_ns;
    use cluster_runtime::ring::assign;
    use cluster_testing::node::{NodeEvent, NodeProcess, NodeSpec, Nodes};
    use cluster_testing::{NatsServer, ServerOptions};

    use super::{node_binary, percentiles, round, WAIT};

    const APP: &str = "cache";
    const P: u32 = 256;
    const TRIALS: usize = 10;
    const TTL_SECS: u64 = 1;

    fn desired(members: &[String]) -> BTreeMap<u32, String> {
        let names: Vec<&str> = members.iter().map(String::as_str).collect();
        assign(APP, P, &names)
            .into_iter()
            .enumerate()
            .filter_map(|(p, o)| Some((p as u32, members[o?].clone())))
            .collect()
    }

    /// When the ring is converged to `members`: the instant the last of
    /// `moved` was served by its owner (or 0 if none moved).
    fn converged(nodes: &Nodes, members: &[String], moved: &BTreeSet<u32>) -> Option<u64> {
        let want = desired(members);
        let h = nodes.history();
        let intervals = h.partition_intervals(APP);
        let mut last = 0;
        for p in 0..P {
            let open: Vec<_> = intervals
                .get(&p)?
                .iter()
                .filter(|i| i.end == u64::MAX)
                .collect();
            let [only] = open.as_slice() else { return None };
            if only.node != want[&p] {
                return None;
            }
            let served = only.serving?;
            if moved.contains(&p) {
                last = last.max(served);
            }
        }
        Some(last)
    }

    async fn wait_converged(
        nodes: &Nodes,
        members: &[String],
        moved: &BTreeSet<u32>,
    ) -> Result<u64, String> {
        nodes
            .wait_until(WAIT, || converged(nodes, members, moved))
            .await
            .ok_or_else(|| format!("ring did not converge to {members:?} within {WAIT:?}"))
    }

    fn moved(before: &[String], after: &[String]) -> BTreeSet<u32> {
        let (a, b) = (desired(before), desired(after));
        (0..P).filter(|p| a[p] != b[p]).collect()
    }

    fn spec(bin: &std::path::Path, url: &str, id: &str) -> NodeSpec {
        let mut s = NodeSpec::new(bin, id, url);
        s.platform = "bench".into();
        s.app = APP.into();
        s.mode = format!("ring({P})");
        s.tick_ms = 0;
        s.lease_ttl_secs = TTL_SECS;
        s
    }

    /// The instant `node` joined the ring (its member lease acquired).
    async fn joined_at(node: &NodeProcess) -> Result<u64, String> {
        match node
            .wait_event(
                |e| matches!(e, NodeEvent::Role(r) if r.app == APP && r.role == Role::Running),
                WAIT,
            )
            .await
        {
            Some(NodeEvent::Role(r)) => Ok(r.t_ns),
            _ => Err(format!("{} never joined the ring", node.id())),
        }
    }

    /// Messages stored in the app's coordination bucket so far.
    async fn coord_writes(js: &async_nats::jetstream::Context) -> Result<u64, String> {
        let mut stream = js
            .get_stream(format!("KV_bench_{APP}_coord"))
            .await
            .map_err(|e| e.to_string())?;
        let info = stream.info().await.map_err(|e| e.to_string())?;
        Ok(info.state.last_sequence)
    }

    pub(super) async fn run() -> Result<(), String> {
        let bin = node_binary()?;
        let server = NatsServer::start(ServerOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        let url = server.url();
        let mut members: Vec<String> = (1..=5).map(|i| format!("n{i}")).collect();
        let mut nodes =
            Nodes::start(members.iter().map(|id| spec(&bin, &url, id)).collect()).await?;
        wait_converged(&nodes, &members, &BTreeSet::new()).await?;

        // Control-plane writes of the idle ring.
        let client = async_nats::connect(url.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let js = async_nats::jetstream::new(client);
        let window = Duration::from_secs(5);
        let w0 = coord_writes(&js).await?;
        tokio::time::sleep(window).await;
        let w1 = coord_writes(&js).await?;
        let write_rate = (w1 - w0) as f64 / window.as_secs_f64() / members.len() as f64;

        let (mut join, mut leave, mut crash, mut ratios) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut next = 1;
        let fair = f64::from(P) / 5.0;
        for _ in 0..TRIALS {
            // Graceful leave of the oldest member.
            let gone = members.remove(0);
            let mv = moved(&[vec![gone.clone()], members.clone()].concat(), &members);
            let node = nodes.get(&gone).ok_or("leaving node vanished")?;
            let t0 = monotonic_ns();
            node.terminate().map_err(|e| e.to_string())?;
            let t1 = wait_converged(&nodes, &members, &mv).await?;
            leave.push(t1.saturating_sub(t0) as f64 / 1e6);
            let node = nodes.get(&gone).ok_or("leaving node vanished")?;
            node.wait_exit(WAIT)
                .await
                .ok_or("leaving node did not exit")?;

            // Two joins, with a SIGKILL between them.
            for step in 0..2 {
                let id = format!("j{next}");
                next += 1;
                let before = members.clone();
                members.push(id.clone());
                let mv = moved(&before, &members);
                ratios.push(mv.len() as f64 / fair);
                let node = NodeProcess::spawn(spec(&bin, &url, &id)).map_err(|e| e.to_string())?;
                node.wait_ready(WAIT).await?;
                let t0 = joined_at(&node).await?;
                nodes.nodes.push(node);
                let t1 = wait_converged(&nodes, &members, &mv).await?;
                join.push(t1.saturating_sub(t0) as f64 / 1e6);
                if step == 1 {
                    break;
                }
                // SIGKILL of the oldest member.
                let dead = members.remove(0);
                let mv = moved(&[vec![dead.clone()], members.clone()].concat(), &members);
                let t0 = nodes.get(&dead).ok_or("killed node vanished")?.kill();
                let t1 = wait_converged(&nodes, &members, &mv).await?;
                crash.push(t1.saturating_sub(t0) as f64 / 1e6);
            }
        }
        let double = nodes.history().double_owners(APP).len();
        drop(nodes);

        let ttl_ms = TTL_SECS * 1000;
        let line = |name: &str, samples: &mut Vec<f64>, extra: serde_json::Value| {
            let (p50, p99) = percentiles(samples);
            let mut v = serde_json::json!({"bench": name, "unit": "ms", "p50": round(p50),
                "p99": round(p99), "trials": samples.len()});
            if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
                v.extend(extra.clone());
            }
            println!("{v}");
        };
        line(
            "ring.handoff_join",
            &mut join,
            serde_json::json!({"target_p99": 1000}),
        );
        line(
            "ring.handoff_leave",
            &mut leave,
            serde_json::json!({"target_p99": 1000}),
        );
        line(
            "ring.crash_recovery",
            &mut crash,
            serde_json::json!({"ttl_ms": ttl_ms, "target_p99": ttl_ms + 1000}),
        );
        let mean = ratios.iter().sum::<f64>() / ratios.len().max(1) as f64;
        let max = ratios.iter().copied().fold(0.0, f64::max);
        println!(
            "{}",
            serde_json::json!({"bench": "ring.moved_ratio", "value": round(mean), "max": round(max),
                "trials": ratios.len(), "target": 1.25})
        );
        println!(
            "{}",
            serde_json::json!({"bench": "ring.double_owner", "value": double, "target": 0})
        );
        println!(
            "{}",
            serde_json::json!({"bench": "ring.write_rate", "unit": "writes/s/node",
                "value": round(write_rate), "renew_ms": ttl_ms / 3, "partitions": P, "nodes": 5,
                "per_claim_leases": round(f64::from(P) / 5.0 * 1000.0 / (ttl_ms / 3) as f64)})
        );
        Ok(())
    }
}
