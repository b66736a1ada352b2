//! Benchmarks (not tests): `cluster-bench <scenario>` prints one JSON object
//! per line. Run through `scripts/bench.sh <scenario>`.
//!
//! Scenarios:
//! - `failover`: graceful hand-over (stepdown → new `on_active` started) and
//!   crash failover (SIGKILL of the active process → new `on_active`), with
//!   node processes on a real nats-server.
//! - `data`: `ctx.kv().put` and an uncontended lock cycle (acquire +
//!   release) against raw async-nats KV calls (`put`; `create` + `delete`)
//!   on the same server, interleaved in the same run.

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
            "data" => data().await,
            other => Err(format!(
                "unknown scenario `{other}`; available: failover, data"
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
