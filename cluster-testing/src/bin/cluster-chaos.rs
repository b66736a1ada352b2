//! Runs chaos suites and prints one JSON line per suite (`scripts/chaos.sh`
//! calls it), or re-checks a saved history.
//!
//! ```sh
//! cluster-chaos run --suite register --seed 7 --seconds 60
//! cluster-chaos check --model register /tmp/chaos-register-seed7-.../history.jsonl
//! ```
//!
//! Exit status: 0 when every suite passed, 1 when one found a violation or
//! could not verify, 2 when a run could not take place.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cluster_testing::jepsen::history::History;
use cluster_testing::jepsen::linearizable::{self, CounterModel, Limits, RegisterModel};
use cluster_testing::jepsen::runner::{self, Binaries, RunConfig, Suite};

#[derive(Debug, Parser)]
#[command(name = "cluster-chaos")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run suites.
    Run {
        /// `counter`, `register`, `set`, `nats`, `ring` or `all`.
        #[arg(long, default_value = "all")]
        suite: String,
        /// Nemesis seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Seconds of workload per suite.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Concurrent clients.
        #[arg(long, default_value_t = 4)]
        clients: u32,
        /// Where failing runs' artifacts go.
        #[arg(long, default_value_os_t = std::env::temp_dir())]
        out_dir: PathBuf,
        /// Directory holding `cluster-chaos-node` and `quickstart`
        /// (default: this binary's).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Keep artifacts of passing runs too.
        #[arg(long)]
        keep: bool,
    },
    /// Re-check a saved history with the linearizability checker.
    Check {
        /// `counter` or `register`.
        #[arg(long)]
        model: String,
        /// The `history.jsonl` of a run.
        history: PathBuf,
    },
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    match Args::parse().command {
        Command::Run {
            suite,
            seed,
            seconds,
            clients,
            out_dir,
            bin_dir,
            keep,
        } => {
            let suites: Vec<Suite> = if suite == "all" {
                Suite::ALL.to_vec()
            } else {
                match Suite::parse(&suite) {
                    Some(s) => vec![s],
                    None => {
                        eprintln!(
                            "error: --suite `{suite}`: use counter, register, set, nats, ring or all"
                        );
                        return ExitCode::from(2);
                    }
                }
            };
            let dir = match bin_dir.or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|e| e.parent().map(PathBuf::from))
            }) {
                Some(d) => d,
                None => {
                    eprintln!("error: cannot find the binaries; pass --bin-dir");
                    return ExitCode::from(2);
                }
            };
            let mut status = ExitCode::SUCCESS;
            for s in suites {
                let mut cfg = RunConfig::new(s, seed, seconds, Binaries::in_dir(&dir));
                cfg.clients = clients;
                cfg.out_dir = out_dir.clone();
                cfg.keep = keep;
                match runner::run(&cfg).await {
                    Ok(report) => {
                        let mut line =
                            serde_json::json!({"bench": format!("chaos.{}", s.as_str())});
                        if let (Some(obj), Ok(serde_json::Value::Object(r))) =
                            (line.as_object_mut(), serde_json::to_value(&report))
                        {
                            for (k, v) in r {
                                if k != "suite" {
                                    obj.insert(k, v);
                                }
                            }
                        }
                        println!("{line}");
                        if !report.passed() {
                            if let Some(a) = &report.artifacts {
                                eprintln!(
                                    "chaos.{}: FAILED (violations {}, unverified {}); history saved in {a}/history.jsonl; replay: scripts/chaos.sh --suite {} --seed {seed} --seconds {seconds}",
                                    s.as_str(),
                                    report.violations,
                                    report.unverified,
                                    s.as_str()
                                );
                            }
                            status = ExitCode::from(1);
                        }
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            status
        }
        Command::Check { model, history } => {
            let h = match History::load(&history) {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("error: {}: {e}", history.display());
                    return ExitCode::from(2);
                }
            };
            let report = match model.as_str() {
                "counter" if cluster_testing::jepsen::counter::applies(&h) => {
                    cluster_testing::jepsen::counter::check(&h)
                }
                "counter" => linearizable::check(&CounterModel, &h, Limits::default()),
                "register" => linearizable::check(&RegisterModel, &h, Limits::default()),
                other => {
                    eprintln!("error: --model `{other}`: use counter or register");
                    return ExitCode::from(2);
                }
            };
            println!(
                "{}",
                serde_json::to_string(&report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
            );
            if report.is_linearizable() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
    }
}
