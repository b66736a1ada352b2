//! A node process for the harness: runs one configurable app and reports
//! every role change, ring ownership change, member event and "active tick"
//! as a JSON line on stdout, so tests in another process can check the
//! invariants. `--mode ring(P)` runs a ring app.

use std::time::Duration;

use clap::Parser;
use cluster_runtime::app::{App, Mode};
use cluster_runtime::backend::{BackendConfig, DockerOptions, HealthProbe};
use cluster_runtime::clock::monotonic_ns;
use cluster_runtime::config::{Config, ConfigArgs};
use cluster_runtime::lease::LeaseTiming;
use cluster_runtime::platform::Platform;
use cluster_testing::node::{NodeEvent, Whoami};

#[derive(Debug, Parser)]
#[command(name = "cluster-test-node")]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// App name.
    #[arg(long, default_value = "counter")]
    app: String,
    /// App mode.
    #[arg(long, default_value = "singleton")]
    mode: String,
    /// App placement.
    #[arg(long, default_value = "")]
    placement: String,
    /// Lease TTL of the app and of the node record, in whole seconds.
    #[arg(long, default_value_t = 3)]
    lease_ttl: u64,
    /// TTL of this node's membership record, in whole seconds, with the
    /// default renew/deadline proportions (default: the app's timing).
    /// The runtime's own default is 3 s: with `--lease-ttl 1`, a cut-off
    /// active then loses its app lease before its node record lapses.
    #[arg(long)]
    node_lease_ttl: Option<u64>,
    /// Override the renew interval (ms); with --lease-deadline-ms.
    #[arg(long, requires = "lease_deadline_ms")]
    lease_renew_ms: Option<u64>,
    /// Override the self-demotion deadline (ms); with --lease-renew-ms.
    #[arg(long, requires = "lease_renew_ms")]
    lease_deadline_ms: Option<u64>,
    /// While active, emit a tick every this many ms (0 = never).
    #[arg(long, default_value_t = 0)]
    tick_ms: u64,
    /// `on_leader_change` and `on_standby` sleep this long (ms) before
    /// returning, emitting `<hook>.done` after (0 = no sleep).
    #[arg(long, default_value_t = 0)]
    hook_sleep_ms: u64,
    /// A virtual IP for the app (`CIDR dev IFACE`).
    #[arg(long)]
    vip: Option<String>,
    /// A managed backend for the app (`process:CMD ...`, ...).
    #[arg(long)]
    backend: Option<String>,
    /// The backend's health endpoint (HTTP GET, 200 expected).
    #[arg(long, requires = "backend")]
    backend_health: Option<String>,
    /// An environment variable for the backend, `KEY=VALUE` (repeatable).
    #[arg(long, requires = "backend")]
    backend_env: Vec<String>,
    /// Docker backend: the container name.
    #[arg(long, requires = "backend")]
    docker_name: Option<String>,
    /// Docker backend: a published port, `HOST:CONTAINER` (repeatable).
    #[arg(long, requires = "backend")]
    docker_port: Vec<String>,
    /// A replicated SQLite database for the app.
    #[arg(long)]
    sqlite: Option<String>,
    /// With --sqlite: while active, insert a row every this many ms (0 =
    /// never); every 5th insert waits for `commit_synced`.
    #[arg(long, default_value_t = 0)]
    writer_ms: u64,
}

/// On becoming active: check the promoted database and report it.
fn check_db(ctx: &cluster_runtime::app::AppContext) -> cluster_runtime::Result<()> {
    let db = ctx.db()?;
    let sql = |e: rusqlite::Error| cluster_runtime::Error::config(format!("sqlite: {e}"));
    db.execute(
        "CREATE TABLE IF NOT EXISTS writes (id INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, pad TEXT)",
        [],
    )
    .map_err(sql)?;
    let integrity: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(sql)?;
    let (rows, max_id): (i64, i64) = db
        .query_row(
            "SELECT count(*), coalesce(max(id), 0) FROM writes",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(sql)?;
    emit(&NodeEvent::DbCheck {
        integrity,
        rows,
        max_id,
        epoch: ctx.fencing_token(),
    });
    Ok(())
}

/// While active: one row per period, every 5th synced.
async fn write_rows(ctx: cluster_runtime::app::AppContext, period: Duration) {
    let Ok(db) = ctx.db() else { return };
    let mut n = 0u64;
    while ctx.is_active() {
        let Some(epoch) = ctx.fencing_token() else {
            break;
        };
        let inserted = db.query_row(
            "INSERT INTO writes (epoch, pad) VALUES (?1, ?2) RETURNING id",
            rusqlite::params![epoch as i64, "x".repeat(200)],
            |r| r.get::<_, i64>(0),
        );
        let Ok(id) = inserted else { break };
        n += 1;
        let synced = n.is_multiple_of(5);
        if synced && db.commit_synced().await.is_err() {
            break;
        }
        emit(&NodeEvent::Committed { id, epoch, synced });
        tokio::time::sleep(period).await;
    }
}

/// A hook that takes `sleep` (if any), then says it is done.
async fn slow_hook(ctx: &cluster_runtime::app::AppContext, hook: &str, sleep: Duration) {
    if sleep.is_zero() {
        return;
    }
    tokio::time::sleep(sleep).await;
    emit(&NodeEvent::Hook {
        hook: format!("{hook}.done"),
        app: ctx.app().into(),
        t_ns: monotonic_ns(),
    });
}

fn emit(event: &NodeEvent) {
    use std::io::Write;
    if let Ok(line) = serde_json::to_string(event) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
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
            emit(&NodeEvent::Error {
                message: e.to_string(),
            });
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> cluster_runtime::Result<()> {
    let config = Config::from_args(&args.config)?;
    let mode = Mode::parse(&args.mode)
        .map_err(|e| cluster_runtime::Error::config(format!("--mode: {e}")))?;
    let ttl = Duration::from_secs(args.lease_ttl);
    let tick = Duration::from_millis(args.tick_ms);
    let hook_sleep = Duration::from_millis(args.hook_sleep_ms);
    let has_db = args.sqlite.is_some();
    let writer = Duration::from_millis(args.writer_ms);
    let timing = match (args.lease_renew_ms, args.lease_deadline_ms) {
        (Some(renew), Some(deadline)) => LeaseTiming::new(
            ttl,
            Duration::from_millis(renew),
            Duration::from_millis(deadline),
        )?,
        _ => LeaseTiming::from_ttl(ttl)?,
    };
    let mut app = App::builder(args.app.clone())
        .mode(mode)
        .placement(args.placement.clone())
        .lease_timing(timing)
        .on_active(move |ctx| async move {
            emit(&NodeEvent::Hook {
                hook: "on_active".into(),
                app: ctx.app().into(),
                t_ns: monotonic_ns(),
            });
            if has_db {
                check_db(&ctx)?;
                if !writer.is_zero() {
                    tokio::spawn(write_rows(ctx.clone(), writer));
                }
            }
            if !tick.is_zero() {
                tokio::spawn(async move {
                    // Work that must only happen while active: each tick is
                    // emitted only after checking the lease is still valid.
                    while ctx.is_active() {
                        let t_ns = monotonic_ns();
                        emit(&NodeEvent::Tick {
                            app: ctx.app().into(),
                            epoch: ctx.fencing_token(),
                            t_ns,
                        });
                        tokio::time::sleep(tick).await;
                    }
                });
            }
            Ok(())
        })
        .handle("whoami", |ctx, (): ()| async move {
            // On a ring partition: the partition's fencing token and whether
            // this node owns it.
            let partition =
                cluster_runtime::rpc::RequestInfo::current().and_then(|i| i.partition());
            let (epoch, active) = match partition {
                Some(p) => (ctx.ring().fencing_token(p), ctx.ring().owns(p)),
                None => (ctx.fencing_token(), ctx.is_active()),
            };
            Ok::<_, cluster_runtime::Error>(Whoami {
                node: ctx.node().to_owned(),
                epoch,
                active,
            })
        })
        .handle("echo", |_ctx, payload: serde_json::Value| async move {
            Ok::<_, cluster_runtime::Error>(payload)
        })
        .on_standby(move |ctx| async move {
            emit(&NodeEvent::Hook {
                hook: "on_standby".into(),
                app: ctx.app().into(),
                t_ns: monotonic_ns(),
            });
            slow_hook(&ctx, "on_standby", hook_sleep).await;
            Ok(())
        })
        .on_leader_change(move |ctx, _leader| async move {
            slow_hook(&ctx, "on_leader_change", hook_sleep).await;
            Ok(())
        })
        .on_start(|ctx| async move {
            emit(&NodeEvent::Hook {
                hook: "on_start".into(),
                app: ctx.app().into(),
                t_ns: monotonic_ns(),
            });
            Ok(())
        })
        .on_stop(|ctx| async move {
            emit(&NodeEvent::Hook {
                hook: "on_stop".into(),
                app: ctx.app().into(),
                t_ns: monotonic_ns(),
            });
            Ok(())
        })
        .on_member_join(|_ctx, node| async move {
            emit(&NodeEvent::MemberJoin { node: node.node });
            Ok(())
        })
        .on_member_leave(|_ctx, node| async move {
            emit(&NodeEvent::MemberLeave { node: node.node });
            Ok(())
        });
    if let Mode::Ring(_) = mode {
        app = app
            .on_own(|ctx, _partitions| async move {
                emit(&NodeEvent::Hook {
                    hook: "on_own".into(),
                    app: ctx.app().into(),
                    t_ns: monotonic_ns(),
                });
                Ok(())
            })
            .on_release(|ctx, _partitions| async move {
                emit(&NodeEvent::Hook {
                    hook: "on_release".into(),
                    app: ctx.app().into(),
                    t_ns: monotonic_ns(),
                });
                Ok(())
            });
    }
    if let Some(vip) = &args.vip {
        app = app.vip(vip.clone());
    }
    if let Some(backend) = &args.backend {
        // The backend learns which node runs it (cluster-test-http answers
        // `GET /` with it).
        let mut backend = BackendConfig::parse(backend)
            .map_err(|e| cluster_runtime::Error::config(format!("--backend: {e}")))?
            .env("NODE_ID", config.node.clone())
            .stop_grace(Duration::from_secs(2));
        for kv in &args.backend_env {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                cluster_runtime::Error::config(format!("--backend-env `{kv}`: use KEY=VALUE"))
            })?;
            backend = backend.env(k, v);
        }
        if args.docker_name.is_some() || !args.docker_port.is_empty() {
            let mut docker = DockerOptions {
                name: args.docker_name.clone(),
                ..DockerOptions::default()
            };
            for p in &args.docker_port {
                let port = |s: &str| {
                    s.parse::<u16>().map_err(|_| {
                        cluster_runtime::Error::config(format!(
                            "--docker-port `{p}`: use HOST:CONTAINER"
                        ))
                    })
                };
                let (host, container) = p.split_once(':').ok_or_else(|| {
                    cluster_runtime::Error::config(format!(
                        "--docker-port `{p}`: use HOST:CONTAINER"
                    ))
                })?;
                docker.ports.push((port(host)?, port(container)?));
            }
            backend = backend.docker(docker);
        }
        if let Some(url) = &args.backend_health {
            backend =
                backend.probe(HealthProbe::new(url.clone()).interval(Duration::from_millis(50)));
        }
        app = app.backend_config(backend);
    }
    if let Some(sqlite) = &args.sqlite {
        app = app.sqlite(sqlite.clone());
    }
    let app = app.build()?;
    let node_timing = match args.node_lease_ttl {
        Some(secs) => LeaseTiming::from_ttl(Duration::from_secs(secs))?,
        None => timing,
    };
    let platform = Platform::builder()
        .config(config)
        .node_lease(node_timing)
        .app(app)
        .on_role_change(|e| emit(&NodeEvent::Role(e.clone())))
        .on_ownership_change(|e| emit(&NodeEvent::Ownership(e.clone())))
        .start()
        .await?;
    emit(&NodeEvent::Ready {
        node: platform.node().to_owned(),
        health_addr: platform.health_addr().map(|a| a.to_string()),
        nats: platform.nats_urls().to_owned(),
    });
    platform.run().await?;
    emit(&NodeEvent::Exited);
    Ok(())
}
