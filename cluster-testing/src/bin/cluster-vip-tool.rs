//! Drives a [`VipManager`] from the command line, for the network-namespace
//! tests (run it inside a host with `ip netns exec`):
//!
//! ```text
//! cluster-vip-tool acquire 10.77.1.100/24 dev eth0   # add + announce, exit
//! cluster-vip-tool release 10.77.1.100/24 dev eth0   # remove, exit
//! cluster-vip-tool hold    10.77.1.100/24 dev eth0   # acquire, refresh, release on SIGTERM/SIGINT
//! ```
//!
//! Prints `acquired`, `held` or `released` on stdout when done; on failure
//! prints `error: MESSAGE` on stderr and exits with 1.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use cluster_runtime::vip::{VipConfig, VipManager};
use cluster_spec::ops::Vip;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Action {
    /// Add the address and send the first gratuitous ARP burst.
    Acquire,
    /// Remove the address.
    Release,
    /// Acquire, keep refreshing, release on SIGTERM or SIGINT.
    Hold,
}

#[derive(Debug, Parser)]
#[command(name = "cluster-vip-tool")]
struct Args {
    action: Action,
    /// `CIDR dev IFACE`, as one argument or three.
    #[arg(required = true, num_args = 1..)]
    vip: Vec<String>,
    /// Gratuitous ARP rounds per burst.
    #[arg(long, default_value_t = 5)]
    garp_count: u32,
    /// Delay of the second burst, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    repeat_after_ms: u64,
    /// Refresh period, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    refresh_ms: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let vip = Vip::parse(&args.vip.join(" "))?;
    let manager = VipManager::new(VipConfig {
        vip,
        garp_count: args.garp_count,
        garp_repeat_after: Duration::from_millis(args.repeat_after_ms),
        refresh: Duration::from_millis(args.refresh_ms),
    })
    .map_err(|e| e.to_string())?;
    match args.action {
        Action::Acquire => {
            manager.acquire().await.map_err(|e| e.to_string())?;
            println!("acquired");
        }
        Action::Release => {
            manager.release().await.map_err(|e| e.to_string())?;
            println!("released");
        }
        Action::Hold => {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
            let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
            manager.acquire().await.map_err(|e| e.to_string())?;
            println!("held");
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            manager.release().await.map_err(|e| e.to_string())?;
            println!("released");
        }
    }
    Ok(())
}
