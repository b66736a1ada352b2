//! The `cluster` command-line tool: inspect and steer a platform straight
//! through NATS (no node needs to be asked for status).

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
    match rt.block_on(run(cli)) {
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
