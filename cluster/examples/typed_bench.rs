//! Benchmark (run by `scripts/bench.sh rpc`): a call through a generated
//! `{App}Client` vs the same call through the untyped client, interleaved
//! call by call on one platform. Prints one JSON line.

use std::time::{Duration, Instant};

use cluster::prelude::*;
use cluster::runtime::nats_server::{NatsServer, ServerOptions};

/// Echoes its argument.
#[cluster::app(mode = "singleton", name = "echo")]
#[derive(Debug, Default)]
pub struct Echo;

#[cluster::app]
impl Echo {
    #[handle]
    async fn echo(&self, _ctx: &AppContext, text: String) -> cluster::Result<String> {
        Ok(text)
    }
}

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = NatsServer::start(ServerOptions::default()).await?;
    let mut config = Config::default();
    config.nats.urls = vec![server.url()];
    config.platform = "bench".into();
    config.node = "t1".into();
    config.health_addr = None;
    let platform = Platform::builder()
        .config(config)
        .app(cluster::__private::build_app::<Echo>()?)
        .start()
        .await?;
    let ctx = platform.app("echo").ok_or("no app")?;
    let text = "x".repeat(98);
    let typed = cluster::call::<Echo>(&ctx);
    // Warm up (and wait until the singleton serves: calls retry meanwhile).
    for _ in 0..200 {
        typed.echo(text.clone()).await?;
    }
    let (mut t, mut u) = (Vec::new(), Vec::new());
    for _ in 0..5000 {
        let start = Instant::now();
        typed.echo(text.clone()).await?;
        t.push(start.elapsed().as_secs_f64() * 1e6);
        let start = Instant::now();
        let _: String = ctx.call("echo").method("echo").send(&text).await?;
        u.push(start.elapsed().as_secs_f64() * 1e6);
    }
    let (typed_p50, untyped_p50) = (p50(t), p50(u));
    println!(
        "{}",
        serde_json::json!({"bench": "rpc.typed_vs_untyped", "unit": "us", "calls": 5000,
            "p50": (typed_p50 * 100.0).round() / 100.0, "baseline": "untyped",
            "baseline_p50": (untyped_p50 * 100.0).round() / 100.0,
            "ratio_p50": (typed_p50 / untyped_p50 * 100.0).round() / 100.0, "target_ratio_p50": 1.05})
    );
    tokio::time::timeout(Duration::from_secs(10), platform.shutdown()).await?;
    Ok(())
}
