//! The `cluster` command-line tool: inspect and steer a platform straight
//! through NATS (no node needs to be asked for status), and replicate or
//! restore a standalone SQLite database (`cluster db`, see
//! `docs/replication-cli.md`).

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use cluster::runtime::error::{Error, Result};
use cluster::runtime::inspect::PlatformView;
use cluster::runtime::naming::Names;
use cluster::runtime::platform::{StepDownReply, StepDownRequest};
use cluster::runtime::transport::{NatsOptions, Transport};

#[derive(Debug, Parser)]
#[command(
    name = "cluster",
    version,
    about = "Inspect and steer a cluster platform through NATS"
)]
struct Cli {
    /// NATS server URLs, comma-separated.
    #[arg(
        long = "nats",
        env = "NATS_URL",
        global = true,
        default_value = "nats://127.0.0.1:4222"
    )]
    nats: String,
    /// Platform name.
    #[arg(
        long,
        env = "CLUSTER_PLATFORM",
        global = true,
        default_value = "default"
    )]
    platform: String,
    /// NATS credentials file.
    #[arg(long, env = "NATS_CREDS", global = true)]
    nats_creds: Option<std::path::PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apps (mode, active node, epoch, standbys) and members.
    Status,
    /// Nodes.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Ask the active instance of APP to hand over to a standby.
    Stepdown {
        /// The app.
        app: String,
    },
    /// Call METHOD of APP with a JSON request; prints the JSON reply.
    Call {
        /// The app.
        app: String,
        /// The method.
        method: String,
        /// The request, as JSON (default `null`).
        #[arg(default_value = "null")]
        request: String,
        /// Call this node's instance instead of routing by the app's mode.
        #[arg(long)]
        node: Option<String>,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// Replicate a SQLite database to a NATS bucket, or restore one from it
    /// (Litestream 0.5 layout: stock `litestream` reads and writes the same
    /// buckets).
    Db {
        #[command(subcommand)]
        command: db::DbCommand,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// List live nodes with their labels and apps.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match &cli.command {
        Command::Db { command } => rt
            .block_on(db::run(&cli, command))
            .map_err(|e| e.to_string()),
        _ => rt.block_on(run(cli)).map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn connect(cli: &Cli) -> Result<(Transport, Names)> {
    let names = Names::new(&cli.platform).map_err(|e| Error::config(format!("--platform: {e}")))?;
    let opts = NatsOptions {
        urls: cli
            .nats
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        creds: cli.nats_creds.clone(),
        name: Some("cluster-cli".into()),
        ..Default::default()
    };
    Ok((Transport::connect(&opts).await?, names))
}

async fn run(cli: Cli) -> Result<()> {
    let (transport, names) = connect(&cli).await?;
    match &cli.command {
        // Needs no platform; `main` runs it without this connection.
        Command::Db { .. } => unreachable!("`cluster db` is dispatched by main"),
        Command::Status => {
            let view = PlatformView::read(&transport, &names).await?;
            if view.members.is_empty() && view.apps.is_empty() {
                return Err(Error::config(format!(
                    "platform `{}` has no members",
                    names.platform()
                )));
            }
            if cli.json {
                print_json(&view);
            } else {
                print_status(&view);
            }
        }
        Command::Node {
            command: NodeCommand::List,
        } => {
            let view = PlatformView::read(&transport, &names).await?;
            if cli.json {
                print_json(&view.members);
            } else {
                print_members(&view);
            }
        }
        Command::Call {
            app,
            method,
            request,
            node,
            timeout_ms,
        } => {
            let body: serde_json::Value = serde_json::from_str(request)
                .map_err(|e| Error::config(format!("request is not JSON: {e}")))?;
            let rpc =
                cluster::runtime::rpc::RpcClient::new(transport.client().clone(), names.clone());
            let mut call = rpc
                .app(app)
                .deadline(Duration::from_millis(*timeout_ms))
                .method(method);
            if let Some(node) = node {
                call = call.instance(node);
            }
            let reply: serde_json::Value = call.send(&body).await?;
            print_json(&reply);
        }
        Command::Stepdown { app } => {
            let body =
                serde_json::to_vec(&StepDownRequest { app: app.clone() }).unwrap_or_default();
            let subject = names.control_subject("stepdown");
            let reply = tokio::time::timeout(
                Duration::from_secs(5),
                transport.client().request(subject, body.into()),
            )
            .await;
            let reply = match reply {
                Ok(Ok(msg)) => serde_json::from_slice::<StepDownReply>(&msg.payload)
                    .map_err(|e| Error::nats("stepdown", format!("unreadable reply: {e}")))?,
                Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                    return Err(Error::config(format!("platform `{}` has no members", names.platform())))
                }
                _ => {
                    return Err(Error::nats(
                        format!("stepdown {app}"),
                        format!("no active instance of `{app}` answered within 5 s (is the app running and active?)"),
                    ))
                }
            };
            if cli.json {
                print_json(
                    &serde_json::json!({ "app": app, "stepped_down": reply.node, "epoch": reply.epoch }),
                );
            } else {
                println!(
                    "{app}: {} stepped down (epoch {})",
                    reply.node,
                    reply.epoch.map_or("-".into(), |e| e.to_string())
                );
            }
        }
    }
    Ok(())
}

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: {e}"),
    }
}

fn dash(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

fn print_status(view: &PlatformView) {
    println!("PLATFORM {}", view.platform);
    println!();
    println!(
        "{:<20} {:<14} {:<16} {:<8} {:<24} RUNNING",
        "APP", "MODE", "ACTIVE", "EPOCH", "STANDBYS"
    );
    for (name, app) in &view.apps {
        println!(
            "{:<20} {:<14} {:<16} {:<8} {:<24} {}",
            name,
            app.mode.as_deref().unwrap_or("-"),
            app.leader.as_deref().unwrap_or("-"),
            app.epoch.map_or("-".into(), |e| e.to_string()),
            dash(&app.standbys),
            dash(&app.running),
        );
    }
    println!();
    print_members(view);
}

fn print_members(view: &PlatformView) {
    println!("{:<16} {:<28} {:<22} APPS", "NODE", "LABELS", "HEALTH");
    for rec in view.members.values() {
        let labels: Vec<String> = rec
            .labels
            .iter()
            .map(|(k, v)| {
                if v.is_empty() {
                    k.clone()
                } else {
                    format!("{k}={v}")
                }
            })
            .collect();
        let apps: Vec<String> = rec
            .apps
            .iter()
            .map(|(a, r)| format!("{a}:{}", r.role))
            .collect();
        println!(
            "{:<16} {:<28} {:<22} {}",
            rec.node,
            dash(&labels),
            rec.health_addr.as_deref().unwrap_or("-"),
            dash(&apps)
        );
    }
}

/// `cluster db`: a standalone SQLite database replicated to, and restored
/// from, a NATS object-store bucket in Litestream 0.5's layout — the
/// `litestream replicate` / `litestream restore` pair, with no platform.
mod db {
    use std::fmt;
    use std::path::{Path, PathBuf};

    use clap::Subcommand;
    use cluster::runtime::error::Error;
    use cluster::runtime::wal::bucket::WalBucket;
    use cluster::runtime::wal::replicator::{Replicator, ReplicatorConfig};
    use cluster::runtime::wal::restorer::{self, RestoreOptions};
    use cluster::runtime::wal::WalError;
    use tokio::signal::unix::{signal, Signal, SignalKind};

    use super::{connect, print_json, Cli};

    #[derive(Debug, Subcommand)]
    pub(crate) enum DbCommand {
        /// Ship every commit of a SQLite database to BUCKET until SIGTERM or
        /// SIGINT, then ship what is committed and print the final TXID.
        Replicate {
            /// The SQLite database file (switched to WAL mode if it is not).
            #[arg(long, value_name = "PATH")]
            db: PathBuf,
            /// The object-store bucket; created if missing.
            #[arg(long, value_name = "NAME")]
            bucket: String,
            /// JetStream replicas of the bucket when it is created.
            #[arg(long, default_value_t = 1, value_name = "N")]
            replicas: usize,
        },
        /// Rebuild the database BUCKET holds into OUT (the newest state, or
        /// the state as of --txid).
        Restore {
            /// The object-store bucket.
            #[arg(long, value_name = "NAME")]
            bucket: String,
            /// Where to write the database.
            #[arg(short = 'o', long = "output", value_name = "OUT")]
            out: PathBuf,
            /// Restore up to this TXID (hex, as Litestream prints it, e.g.
            /// `000000000000002a` or `2a`); it must end a file in the bucket.
            #[arg(long, value_name = "HEX", value_parser = parse_txid)]
            txid: Option<u64>,
            /// Replace OUT if it exists (and its stale `-wal`/`-shm`).
            #[arg(long)]
            force: bool,
        },
    }

    /// Why a `cluster db` command failed.
    #[derive(Debug)]
    pub(crate) enum DbError {
        /// The database to replicate is not there.
        NoDatabase(PathBuf),
        /// The path to replicate is not a regular file.
        NotAFile(PathBuf),
        /// OUT exists and `--force` was not given.
        OutputExists(PathBuf),
        /// The requested TXID is not a state the bucket can restore.
        Txid {
            txid: u64,
            newest: Option<u64>,
            source: WalError,
        },
        /// A second signal arrived while the last commits were shipped.
        Interrupted(&'static str),
        /// Signal handlers could not be installed.
        Signals(std::io::Error),
        /// Connecting to NATS failed.
        Connect(Error),
        /// Replication or restore failed.
        Wal(WalError),
    }

    impl fmt::Display for DbError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                DbError::NoDatabase(p) => write!(f, "database `{}` does not exist", p.display()),
                DbError::NotAFile(p) => write!(f, "database `{}` is not a file", p.display()),
                DbError::OutputExists(p) => write!(
                    f,
                    "`{}` already exists; pass --force to replace it",
                    p.display()
                ),
                DbError::Txid {
                    txid,
                    newest,
                    source,
                } => {
                    write!(f, "cannot restore TXID {txid:016x}: {source}")?;
                    match newest {
                        // Within the bucket's range but inside a file: only
                        // file boundaries are restorable states.
                        Some(newest) if newest >= txid => write!(
                            f,
                            " (a TXID to restore must end a file in the bucket; \
                             the newest is {newest:016x})"
                        ),
                        _ => Ok(()),
                    }
                }
                DbError::Interrupted(sig) => {
                    write!(f, "{sig} again: stopped without shipping the last commits")
                }
                DbError::Signals(e) => write!(f, "cannot handle SIGTERM/SIGINT: {e}"),
                DbError::Connect(e) => e.fmt(f),
                DbError::Wal(e) => e.fmt(f),
            }
        }
    }

    impl From<WalError> for DbError {
        fn from(e: WalError) -> Self {
            DbError::Wal(e)
        }
    }

    /// A TXID as Litestream prints it: up to 16 hex digits, `0x` allowed.
    fn parse_txid(s: &str) -> Result<u64, String> {
        let hex = s.strip_prefix("0x").unwrap_or(s);
        if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "`{s}` is not a TXID (up to 16 hex digits, e.g. 000000000000002a)"
            ));
        }
        match u64::from_str_radix(hex, 16) {
            Ok(0) => Err("TXIDs start at 1".into()),
            Ok(txid) => Ok(txid),
            Err(e) => Err(format!("`{s}` is not a TXID: {e}")),
        }
    }

    pub(crate) async fn run(cli: &Cli, command: &DbCommand) -> Result<(), DbError> {
        match command {
            DbCommand::Replicate {
                db,
                bucket,
                replicas,
            } => replicate(cli, db, bucket, *replicas).await,
            DbCommand::Restore {
                bucket,
                out,
                txid,
                force,
            } => restore(cli, bucket, out, *txid, *force).await,
        }
    }

    /// SIGTERM or SIGINT, whichever comes first.
    struct Signals {
        term: Signal,
        int: Signal,
    }

    impl Signals {
        fn install() -> Result<Self, DbError> {
            Ok(Signals {
                term: signal(SignalKind::terminate()).map_err(DbError::Signals)?,
                int: signal(SignalKind::interrupt()).map_err(DbError::Signals)?,
            })
        }

        async fn recv(&mut self) -> &'static str {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
    }

    async fn replicate(cli: &Cli, db: &Path, bucket: &str, replicas: usize) -> Result<(), DbError> {
        match std::fs::metadata(db) {
            Ok(m) if m.is_file() => {}
            Ok(_) => return Err(DbError::NotAFile(db.to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DbError::NoDatabase(db.to_owned()))
            }
            Err(e) => return Err(WalError::io(db, e).into()),
        }
        // Upload retries and the like go to stderr; stdout keeps its two lines.
        let filter =
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
        // Installed first: a signal during start-up is seen, not fatal.
        let mut signals = Signals::install()?;
        let (transport, _) = connect(cli).await.map_err(DbError::Connect)?;
        let wal_bucket = WalBucket::open_or_create(transport.jetstream(), bucket, replicas).await?;
        let replicator = Replicator::start(ReplicatorConfig::new(db, wal_bucket)).await?;
        let start = replicator.position().borrow().txid;
        if cli.json {
            println!(
                "{}",
                serde_json::json!({
                    "event": "replicating",
                    "db": db,
                    "bucket": bucket,
                    "nats": transport.urls(),
                    "after_txid": format!("{start:016x}"),
                })
            );
        } else {
            let after = if start == 0 {
                String::new()
            } else {
                format!(" after TXID {start:016x}")
            };
            println!(
                "replicating {} to bucket `{bucket}` at {}{after}; SIGTERM or Ctrl-C stops",
                db.display(),
                transport.urls()
            );
        }

        let mut position = replicator.position();
        loop {
            tokio::select! {
                _ = signals.recv() => break,
                changed = position.changed() => {
                    if changed.is_err() || replicator.error().is_some() {
                        break;
                    }
                }
            }
        }
        // Ship what is committed; a second signal gives up on that.
        let stopped = tokio::select! {
            stopped = replicator.stop() => stopped?,
            sig = signals.recv() => return Err(DbError::Interrupted(sig)),
        };
        if cli.json {
            println!(
                "{}",
                serde_json::json!({
                    "event": "stopped",
                    "bucket": bucket,
                    "txid": format!("{:016x}", stopped.txid),
                })
            );
        } else {
            println!(
                "stopped; bucket `{bucket}` holds TXID {:016x}",
                stopped.txid
            );
        }
        Ok(())
    }

    async fn restore(
        cli: &Cli,
        bucket: &str,
        out: &Path,
        txid: Option<u64>,
        force: bool,
    ) -> Result<(), DbError> {
        if !force && out.symlink_metadata().is_ok() {
            return Err(DbError::OutputExists(out.to_owned()));
        }
        let (transport, _) = connect(cli).await.map_err(DbError::Connect)?;
        let wal_bucket = WalBucket::open(transport.jetstream(), bucket).await?;
        let options = RestoreOptions {
            target: txid,
            overwrite: force,
        };
        let info = match (
            restorer::restore_with(&wal_bucket, out, &options).await,
            txid,
        ) {
            (Ok(info), _) => info,
            // The bucket is fine but has no state at that TXID: say which it has.
            (Err(e @ (WalError::Unavailable { .. } | WalError::Gap { .. })), Some(txid)) => {
                let newest = wal_bucket
                    .list()
                    .await
                    .ok()
                    .and_then(|l| l.values().flatten().map(|f| f.max_txid).max());
                return Err(DbError::Txid {
                    txid,
                    newest,
                    source: e,
                });
            }
            (Err(e), _) => return Err(e.into()),
        };
        if cli.json {
            print_json(&serde_json::json!({
                "bucket": bucket,
                "out": out,
                "txid": format!("{:016x}", info.txid),
                "files": info.files,
                "bytes": info.bytes,
                "pages": info.pages,
            }));
        } else {
            println!(
                "restored TXID {:016x} ({} files, {} bytes) to {}",
                info.txid,
                info.files,
                info.bytes,
                out.display()
            );
        }
        Ok(())
    }
}
