//! Quick start: a counter with exactly one active instance.
//!
//! Run three of these against one NATS (or none: the first starts a local
//! nats-server with `--dev`); one is active and counts, the others stand
//! by. Kill the active one and a standby takes over within the lease TTL.
//!
//! ```sh
//! quickstart --nats nats://127.0.0.1:4222 --node n1 --health-addr 127.0.0.1:8081
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cluster::prelude::*;

fn main() -> std::process::ExitCode {
    cluster::run(|| {
        let count = Arc::new(AtomicU64::new(0));
        let app = App::builder("counter")
            .mode(Mode::Singleton)
            .on_active(move |ctx| {
                let count = count.clone();
                async move {
                    println!(
                        "{}: ACTIVE for counter (epoch {:?})",
                        ctx.node(),
                        ctx.fencing_token()
                    );
                    tokio::spawn(async move {
                        // Count only while the lease is valid: is_active()
                        // turns false on time even if this node is cut off.
                        while ctx.is_active() {
                            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                            if n.is_multiple_of(5) {
                                println!("{}: count = {n}", ctx.node());
                            }
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    });
                    Ok(())
                }
            })
            .on_standby(|ctx| async move {
                println!(
                    "{}: standby for counter (leader: {:?})",
                    ctx.node(),
                    ctx.leader()
                );
                Ok(())
            })
            .build()?;
        Ok(vec![app])
    })
}
