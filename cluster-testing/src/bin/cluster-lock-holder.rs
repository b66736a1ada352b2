//! A lock holder for fault-injection tests: acquires one lock and reports
//! on stdout, as JSON lines, when it got it and when its guard stopped being
//! valid — so a test can SIGKILL or SIGSTOP it and compare, on the shared
//! monotonic clock, against another holder's acquisition.
//!
//! Lines: `{"event":"acquired","token":T,"t_ns":N}` once held, then
//! `{"event":"invalid","t_ns":N,"valid_until_ns":V}` when `is_valid()` turns
//! false (V is when validity ended: the lease deadline).

use std::time::Duration;

use clap::Parser;
use cluster_runtime::clock::{instant_ns, monotonic_ns};
use cluster_runtime::lease::LeaseTiming;
use cluster_runtime::lock::Locks;
use cluster_runtime::naming::Names;

#[derive(Debug, Parser)]
#[command(name = "cluster-lock-holder")]
struct Args {
    /// NATS URL.
    #[arg(long)]
    nats: String,
    /// Platform name.
    #[arg(long, default_value = "test")]
    platform: String,
    /// App owning the lock.
    #[arg(long, default_value = "jobs")]
    app: String,
    /// This holder's node id.
    #[arg(long, default_value = "holder")]
    node: String,
    /// Lock name.
    #[arg(long, default_value = "l")]
    lock: String,
    /// Lease TTL in whole seconds.
    #[arg(long, default_value_t = 1)]
    ttl: u64,
}

fn emit(v: serde_json::Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            emit(serde_json::json!({"event": "error", "message": e}));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let client = async_nats::connect(&args.nats)
        .await
        .map_err(|e| e.to_string())?;
    let js = async_nats::jetstream::new(client);
    let names = Names::new(&args.platform).map_err(|e| e.to_string())?;
    let timing = LeaseTiming::from_ttl(Duration::from_secs(args.ttl)).map_err(|e| e.to_string())?;
    let locks = Locks::new(
        js,
        names.clone(),
        names.app_coord_bucket(&args.app),
        1,
        Some(&args.app),
        &args.node,
    );
    let lock = locks
        .lock(&args.lock)
        .map_err(|e| e.to_string())?
        .timing(timing);
    let guard = lock
        .acquire(Duration::from_secs(60))
        .await
        .map_err(|e| e.to_string())?;
    emit(serde_json::json!({"event": "acquired", "token": guard.token(), "t_ns": monotonic_ns()}));
    while guard.is_valid() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t_ns = monotonic_ns();
    let valid_until_ns = guard.validity().map(|v| instant_ns(v.valid_until()));
    emit(serde_json::json!({"event": "invalid", "t_ns": t_ns, "valid_until_ns": valid_until_ns}));
    // Stay alive so the test decides when this process ends.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    Ok(())
}
