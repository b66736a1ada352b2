//! A node for the chaos suites (`cluster_testing::jepsen`): runs one app,
//! the singletons `register` or `set` or the ring `kvring`, whose handlers
//! reply with the node and fencing token that served them and record every
//! execution.
//!
//! - `register` (KV-backed): `write(v)` stores `{"value": v, "epoch": E}` in
//!   `ctx.kv()` key `reg` and in memory; `read` returns the value in memory;
//!   `cas({"from", "to"})` compares the value in memory, and on a match
//!   stores and returns `true`. The value is loaded from KV on activation.
//! - `set`: `add(x)` stores key `e.<x>`; `read` lists the stored elements.
//! - `kvring` (`ring(16)`, KV-backed): one register per key, each call
//!   routed to the owner of the key's partition. `write({"key", "value"})`
//!   stores `{"value", "epoch", "partition", "node"}` in `ctx.kv()` key
//!   `reg.<key>` (`epoch` = `ctx.ring().fencing_token(p)` when the handler
//!   started), then in memory; `read({"key"})` returns the value in memory;
//!   `cas({"key", "from", "to"})` compares in memory and on a match stores
//!   and returns `true`. `on_own` loads the owned partitions' registers from
//!   KV, `on_release` forgets them. Ring KV writes are not fenced by the
//!   server (yet): the token in the value is what lets the fencing checker
//!   see a deposed owner's late write. Replies add `"partition"`.
//!   `--work-ms` adds simulated work between reading the token and
//!   storing (a pause landing there resumes into a write under the old
//!   token).
//!
//! Every reply is `{"value": .., "node": .., "epoch": ..}` where `epoch` is
//! `ctx.fencing_token()` when the handler started. Every handler execution
//! is appended to `--exec-log` as one JSON line
//! ([`cluster_testing::jepsen::exec::Execution`]). The handlers do not check
//! `ctx.is_active()` themselves: the runtime is what is under test.

use std::collections::HashMap;
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
use cluster_runtime::ring::Partitions;
use cluster_runtime::rpc::{HandlerError, RequestInfo};
use cluster_testing::jepsen::exec::Execution;
use serde::{Deserialize, Serialize};

#[derive(Debug, Parser)]
#[command(name = "cluster-chaos-node")]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// `register`, `set` or `kvring`.
    #[arg(long)]
    app: String,
    /// Partitions of `kvring`.
    #[arg(long, default_value_t = 16)]
    partitions: u32,
    /// `kvring`: milliseconds of simulated work in `write` and a matching
    /// `cas`, between reading the partition token (and the register) and
    /// writing KV — as a real handler computes before it stores.
    #[arg(long, default_value_t = 0)]
    work_ms: u64,
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
    /// The ring partition (`kvring` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    partition: Option<u32>,
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

/// One execution in progress; recorded when it ends, or as cancelled
/// when it is dropped first (the RPC server drops handlers past their
/// deadline).
struct Running {
    log: ExecLog,
    done: bool,
    ctx: AppContext,
    method: &'static str,
    epoch: Option<u64>,
    /// The ring partition (`None`: a singleton).
    partition: Option<u32>,
    start_ns: u64,
    active_at_start: bool,
}

impl Running {
    fn begin(ctx: &AppContext, log: &ExecLog, method: &'static str) -> Running {
        let start_ns = monotonic_ns();
        Running {
            log: log.clone(),
            done: false,
            active_at_start: ctx.is_active(),
            epoch: ctx.fencing_token(),
            ctx: ctx.clone(),
            method,
            partition: None,
            start_ns,
        }
    }

    /// A ring handler of `partition`: "active" is `owns(partition)` and
    /// the epoch the partition's fencing token.
    fn begin_ring(
        ctx: &AppContext,
        log: &ExecLog,
        method: &'static str,
        partition: u32,
    ) -> Running {
        let start_ns = monotonic_ns();
        Running {
            log: log.clone(),
            done: false,
            active_at_start: ctx.ring().owns(partition),
            epoch: ctx.ring().fencing_token(partition),
            ctx: ctx.clone(),
            method,
            partition: Some(partition),
            start_ns,
        }
    }

    fn record(&mut self, cancelled: bool) {
        self.done = true;
        let active_at_end = match self.partition {
            Some(p) => self.ctx.ring().owns(p),
            None => self.ctx.is_active(),
        };
        let end_ns = monotonic_ns();
        self.log.record(&Execution {
            node: self.ctx.node().to_owned(),
            app: self.ctx.app().to_owned(),
            method: self.method.to_owned(),
            epoch: self.epoch,
            partition: self.partition,
            start_ns: self.start_ns,
            end_ns,
            active_at_start: self.active_at_start,
            active_at_end,
            cancelled,
        });
    }

    fn end(mut self, value: serde_json::Value) -> Reply {
        self.record(false);
        Reply {
            value,
            node: self.ctx.node().to_owned(),
            epoch: self.epoch,
            partition: self.partition,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.done {
            self.record(true);
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
                let run = Running::begin(&ctx, &log, "write");
                let mut held = mem.lock().await;
                let stored = Stored {
                    value,
                    epoch: run.epoch,
                };
                ctx.kv()
                    .put_json("reg", &stored)
                    .await
                    .map_err(not_written)?;
                *held = Some(value);
                drop(held);
                Ok::<_, HandlerError>(run.end(serde_json::Value::Null))
            }
        })
        .handle("read", move |ctx, (): ()| {
            let (mem, log) = (m3.clone(), l2.clone());
            async move {
                let run = Running::begin(&ctx, &log, "read");
                let value = *mem.lock().await;
                Ok::<_, String>(run.end(serde_json::json!(value)))
            }
        })
        .handle("cas", move |ctx, cas: Cas| {
            let (mem, log) = (m4.clone(), l3.clone());
            async move {
                let run = Running::begin(&ctx, &log, "cas");
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
                        .map_err(not_written)?;
                    *held = Some(cas.to);
                }
                drop(held);
                Ok::<_, HandlerError>(run.end(serde_json::json!(ok)))
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
                let run = Running::begin(&ctx, &log, "add");
                let epoch = serde_json::to_vec(&run.epoch).map_err(|e| e.to_string())?;
                ctx.kv()
                    .put(&format!("e.{element}"), epoch)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(run.end(serde_json::Value::Null))
            }
        })
        .handle("read", move |ctx, (): ()| {
            let log = log.clone();
            async move {
                let run = Running::begin(&ctx, &log, "read");
                let keys = ctx.kv().keys().await.map_err(|e| e.to_string())?;
                let mut elements: Vec<u64> = keys
                    .iter()
                    .filter_map(|k| k.strip_prefix("e.")?.parse().ok())
                    .collect();
                elements.sort_unstable();
                Ok::<_, String>(run.end(serde_json::json!(elements)))
            }
        })
}

/// What `kvring` stores under `reg.<key>`.
#[derive(Debug, Serialize, Deserialize)]
struct RingStored {
    value: i64,
    /// The partition's fencing token when the writing handler started.
    epoch: Option<u64>,
    partition: u32,
    node: String,
}

#[derive(Debug, Deserialize)]
struct KeyReq {
    key: String,
}

#[derive(Debug, Deserialize)]
struct KeyWrite {
    key: String,
    value: i64,
}

#[derive(Debug, Deserialize)]
struct KeyCas {
    key: String,
    from: i64,
    to: i64,
}

/// `kvring`'s registers in memory: partition → key → value.
type RingMem = Arc<tokio::sync::Mutex<HashMap<u32, HashMap<String, i64>>>>;

/// The partition a ring call was routed to, which must be its key's.
fn routed_partition(ctx: &AppContext, key: &str) -> Result<u32, HandlerError> {
    let p = ctx.ring().partition_of(key);
    match RequestInfo::current().and_then(|i| i.partition()) {
        Some(routed) if routed == p => Ok(p),
        Some(routed) => Err(HandlerError::bad_request(format!(
            "key `{key}` belongs to partition {p}, not {routed}"
        ))),
        None => Err(HandlerError::bad_request(format!(
            "call `{key}` through its partition subject (partition {p})"
        ))),
    }
}

fn reg_key(key: &str) -> String {
    format!("reg.{key}")
}

/// Stores a register in KV, tagged with the partition's token.
async fn store_reg(
    ctx: &AppContext,
    run: &Running,
    p: u32,
    key: &str,
    value: i64,
) -> Result<(), HandlerError> {
    let stored = RingStored {
        value,
        epoch: run.epoch,
        partition: p,
        node: ctx.node().to_owned(),
    };
    ctx.kv()
        .put_json(&reg_key(key), &stored)
        .await
        .map(|_| ())
        .map_err(not_written)
}

/// A failed KV write as the reply says it: `unavailable` ("did not
/// happen", for the harness) when it was certainly not stored — refused as
/// fenced, or no stream answered the publish (an R3 stream between
/// leaders) — and a handler error (it may have been stored: the ack was
/// lost) otherwise.
fn not_written(e: cluster_runtime::kv::KvError) -> HandlerError {
    use cluster_runtime::kv::KvErrorKind;
    use cluster_runtime::rpc::ErrorCode;
    let text = e.to_string();
    let certain = e.kind() == KvErrorKind::Fenced || text.contains("no stream found");
    if certain {
        HandlerError::with_code(ErrorCode::Unavailable, format!("not stored: {text}"))
    } else {
        HandlerError::new(text)
    }
}

fn kvring(log: ExecLog, work: Duration) -> cluster_runtime::app::AppBuilder {
    let mem: RingMem = Arc::default();
    let (m1, m2, m3, m4, m5) = (mem.clone(), mem.clone(), mem.clone(), mem.clone(), mem);
    let (l1, l2, l3) = (log.clone(), log.clone(), log);
    App::builder("kvring")
        .kv(KvOptions::default().history(64))
        .on_own(move |ctx, partitions: Partitions| {
            let mem = m1.clone();
            async move {
                ctx.kv().open().await?;
                let mut loaded: HashMap<u32, HashMap<String, i64>> =
                    partitions.iter().map(|p| (p, HashMap::new())).collect();
                for k in ctx.kv().keys().await? {
                    let Some(key) = k.strip_prefix("reg.") else {
                        continue;
                    };
                    let p = ctx.ring().partition_of(key);
                    let Some(regs) = loaded.get_mut(&p) else {
                        continue;
                    };
                    if let Some(s) = ctx.kv().get_json::<RingStored>(&k).await? {
                        regs.insert(key.to_owned(), s.value);
                    }
                }
                mem.lock().await.extend(loaded);
                Ok(())
            }
        })
        .on_release(move |_ctx, partitions: Partitions| {
            let mem = m2.clone();
            async move {
                let mut held = mem.lock().await;
                for p in &partitions {
                    held.remove(&p);
                }
                Ok(())
            }
        })
        .handle("write", move |ctx, req: KeyWrite| {
            let (mem, log) = (m3.clone(), l1.clone());
            async move {
                let p = routed_partition(&ctx, &req.key)?;
                let run = Running::begin_ring(&ctx, &log, "write", p);
                let mut held = mem.lock().await;
                tokio::time::sleep(work).await;
                store_reg(&ctx, &run, p, &req.key, req.value).await?;
                held.entry(p).or_default().insert(req.key, req.value);
                drop(held);
                Ok::<_, HandlerError>(run.end(serde_json::Value::Null))
            }
        })
        .handle("read", move |ctx, req: KeyReq| {
            let (mem, log) = (m4.clone(), l2.clone());
            async move {
                let p = routed_partition(&ctx, &req.key)?;
                let run = Running::begin_ring(&ctx, &log, "read", p);
                let value = mem
                    .lock()
                    .await
                    .get(&p)
                    .and_then(|regs| regs.get(&req.key))
                    .copied();
                Ok::<_, HandlerError>(run.end(serde_json::json!(value)))
            }
        })
        .handle("cas", move |ctx, req: KeyCas| {
            let (mem, log) = (m5.clone(), l3.clone());
            async move {
                let p = routed_partition(&ctx, &req.key)?;
                let run = Running::begin_ring(&ctx, &log, "cas", p);
                let mut held = mem.lock().await;
                let current = held.get(&p).and_then(|regs| regs.get(&req.key)).copied();
                let ok = current == Some(req.from);
                if ok {
                    tokio::time::sleep(work).await;
                    store_reg(&ctx, &run, p, &req.key, req.to).await?;
                    held.entry(p).or_default().insert(req.key, req.to);
                }
                drop(held);
                Ok::<_, HandlerError>(run.end(serde_json::json!(ok)))
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
        "register" => register(log).mode(Mode::Singleton),
        "set" => set(log).mode(Mode::Singleton),
        "kvring" => {
            kvring(log, Duration::from_millis(args.work_ms)).mode(Mode::Ring(args.partitions))
        }
        other => {
            return Err(cluster_runtime::Error::config(format!(
                "--app `{other}`: use `register`, `set` or `kvring`"
            )))
        }
    };
    let app = app.lease_timing(timing).build()?;
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
