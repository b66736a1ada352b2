//! A node for the chaos suites (`cluster_testing::jepsen`): runs one
//! singleton app, `register` or `set`, whose handlers reply with the node
//! and fencing token that served them and record every execution.
//!
//! - `register` (KV-backed): `write(v)` stores `{"value": v, "epoch": E}` in
//!   `ctx.kv()` key `reg` and in memory; `read` returns the value in memory;
//!   `cas({"from", "to"})` compares the value in memory, and on a match
//!   stores and returns `true`. The value is loaded from KV on activation.
//! - `set`: `add(x)` stores key `e.<x>`; `read` lists the stored elements.
//!
//! Every reply is `{"value": .., "node": .., "epoch": ..}` where `epoch` is
//! `ctx.fencing_token()` when the handler started. Every handler execution
//! is appended to `--exec-log` as one JSON line
//! ([`cluster_testing::jepsen::exec::Execution`]). The handlers do not check
//! `ctx.is_active()` themselves: the runtime is what is under test.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use cluster_runtime::app::{App, AppContext, Mode};
use cluster_runtime::clock::monotonic_ns;
use cluster_runtime::config::{Config, ConfigArgs};
use cluster_runtime::kv::KvOptions;
use cluster_runtime::lease::LeaseTiming;
use cluster_runtime::platform::Platform;
use cluster_testing::jepsen::exec::Execution;
use serde::{Deserialize, Serialize};

#[derive(Debug, Parser)]
#[command(name = "cluster-chaos-node")]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// `register` or `set`.
    #[arg(long)]
    app: String,
    /// Lease TTL in whole seconds.
    #[arg(long, default_value_t = 1)]
    lease_ttl: u64,
    /// Where to append one JSON line per handler execution.
    #[arg(long)]
    exec_log: PathBuf,
}

/// The reply of every handler.
#[derive(Debug, Serialize)]
struct Reply {
    value: serde_json::Value,
    node: String,
    epoch: Option<u64>,
}

/// What `register` stores under `reg`.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    value: i64,
    epoch: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct Cas {
    from: i64,
    to: i64,
}

/// Appends executions to the log, one `write` per line.
#[derive(Clone)]
struct ExecLog(Arc<Mutex<std::fs::File>>);

impl ExecLog {
    fn record(&self, e: &Execution) {
        if let (Ok(mut line), Ok(mut f)) = (serde_json::to_vec(e), self.0.lock()) {
            line.push(b'\n');
            let _ = f.write_all(&line);
        }
    }
}

/// One execution in progress.
struct Running {
    ctx: AppContext,
    method: &'static str,
    epoch: Option<u64>,
    start_ns: u64,
    active_at_start: bool,
}

impl Running {
    fn begin(ctx: &AppContext, method: &'static str) -> Running {
        let start_ns = monotonic_ns();
        Running {
            active_at_start: ctx.is_active(),
            epoch: ctx.fencing_token(),
            ctx: ctx.clone(),
            method,
            start_ns,
        }
    }

    fn end(self, log: &ExecLog, value: serde_json::Value) -> Reply {
        let active_at_end = self.ctx.is_active();
        let end_ns = monotonic_ns();
        log.record(&Execution {
            node: self.ctx.node().to_owned(),
            app: self.ctx.app().to_owned(),
            method: self.method.to_owned(),
            epoch: self.epoch,
            start_ns: self.start_ns,
            end_ns,
            active_at_start: self.active_at_start,
            active_at_end,
        });
        Reply {
            value,
            node: self.ctx.node().to_owned(),
            epoch: self.epoch,
        }
    }
}

fn register(log: ExecLog) -> cluster_runtime::app::AppBuilder {
    let mem: Arc<tokio::sync::Mutex<Option<i64>>> = Arc::default();
    let (m1, m2, m3, m4) = (mem.clone(), mem.clone(), mem.clone(), mem);
    let (l1, l2, l3) = (log.clone(), log.clone(), log);
    App::builder("register")
        .kv(KvOptions::default().history(64))
        .on_active(move |ctx| {
            let mem = m1.clone();
            async move {
                ctx.kv().open().await?;
                let saved = ctx.kv().get_json::<Stored>("reg").await?;
                *mem.lock().await = saved.map(|s| s.value);
                Ok(())
            }
        })
        .handle("write", move |ctx, value: i64| {
            let (mem, log) = (m2.clone(), l1.clone());
            async move {
                let run = Running::begin(&ctx, "write");
                let mut held = mem.lock().await;
                let stored = Stored {
                    value,
                    epoch: run.epoch,
                };
                ctx.kv()
                    .put_json("reg", &stored)
                    .await
                    .map_err(|e| e.to_string())?;
                *held = Some(value);
                drop(held);
                Ok::<_, String>(run.end(&log, serde_json::Value::Null))
            }
        })
        .handle("read", move |ctx, (): ()| {
            let (mem, log) = (m3.clone(), l2.clone());
            async move {
                let run = Running::begin(&ctx, "read");
                let value = *mem.lock().await;
                Ok::<_, String>(run.end(&log, serde_json::json!(value)))
            }
        })
        .handle("cas", move |ctx, cas: Cas| {
            let (mem, log) = (m4.clone(), l3.clone());
            async move {
                let run = Running::begin(&ctx, "cas");
                let mut held = mem.lock().await;
                let ok = *held == Some(cas.from);
                if ok {
                    let stored = Stored {
                        value: cas.to,
                        epoch: run.epoch,
                    };
                    ctx.kv()
                        .put_json("reg", &stored)
                        .await
                        .map_err(|e| e.to_string())?;
                    *held = Some(cas.to);
                }
                drop(held);
                Ok::<_, String>(run.end(&log, serde_json::json!(ok)))
            }
        })
}

fn set(log: ExecLog) -> cluster_runtime::app::AppBuilder {
    let l1 = log.clone();
    App::builder("set")
        .on_active(|ctx| async move {
            ctx.kv().open().await?;
            Ok(())
        })
        .handle("add", move |ctx, element: u64| {
            let log = l1.clone();
            async move {
                let run = Running::begin(&ctx, "add");
                let epoch = serde_json::to_vec(&run.epoch).map_err(|e| e.to_string())?;
                ctx.kv()
                    .put(&format!("e.{element}"), epoch)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(run.end(&log, serde_json::Value::Null))
            }
        })
        .handle("read", move |ctx, (): ()| {
            let log = log.clone();
            async move {
                let run = Running::begin(&ctx, "read");
                let keys = ctx.kv().keys().await.map_err(|e| e.to_string())?;
                let mut elements: Vec<u64> = keys
                    .iter()
                    .filter_map(|k| k.strip_prefix("e.")?.parse().ok())
                    .collect();
                elements.sort_unstable();
                Ok::<_, String>(run.end(&log, serde_json::json!(elements)))
            }
        })
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> cluster_runtime::Result<()> {
    let config = Config::from_args(&args.config)?;
    let timing = LeaseTiming::from_ttl(Duration::from_secs(args.lease_ttl))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.exec_log)
        .map_err(|e| {
            cluster_runtime::Error::config(format!("--exec-log {}: {e}", args.exec_log.display()))
        })?;
    let log = ExecLog(Arc::new(Mutex::new(file)));
    let app = match args.app.as_str() {
        "register" => register(log),
        "set" => set(log),
        other => {
            return Err(cluster_runtime::Error::config(format!(
                "--app `{other}`: use `register` or `set`"
            )))
        }
    };
    let app = app.mode(Mode::Singleton).lease_timing(timing).build()?;
    let platform = Platform::builder()
        .config(config)
        .node_lease(timing)
        .app(app)
        .start()
        .await?;
    println!("{{\"event\":\"ready\",\"node\":\"{}\"}}", platform.node());
    platform.run().await?;
    Ok(())
}
