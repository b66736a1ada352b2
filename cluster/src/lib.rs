//! Build highly available clustered applications on NATS, not infrastructure.
//!
//! `cluster` gives plain Rust code leader election and failover, pools,
//! typed RPC and more, all on NATS JetStream. Today apps are built with the
//! builder API below; the `#[cluster::app]` attribute DSL generates the same
//! calls.
//!
//! ```no_run
//! use cluster::prelude::*;
//!
//! # async fn run() -> cluster::Result<()> {
//! let app = App::builder("counter")
//!     .mode(Mode::Singleton)
//!     .on_active(|ctx| async move {
//!         println!("{} is active (epoch {:?})", ctx.node(), ctx.fencing_token());
//!         Ok(())
//!     })
//!     .build()?;
//! Platform::builder().config(Config::default()).app(app).start().await?.run().await
//! # }
//! ```

pub use cluster_runtime as runtime;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private;

pub use cluster_macros::{app, main};

/// The typed client of app `A` (its generated `{App}Client`), calling from
/// the app whose context is `ctx`: calls carry the caller's app and node.
///
/// ```ignore
/// let n = cluster::call::<Counter>(ctx).incr(5).await?;
/// ```
pub fn call<A: runtime::rpc::RemoteApp>(ctx: &AppContext) -> A::Client {
    ctx.rpc().typed::<A>()
}
pub use cluster_runtime::{
    App, AppContext, Config, ConfigArgs, Error, Mode, Platform, Result, Role,
};

/// What an app needs, in one import.
pub mod prelude {
    pub use cluster_runtime::app::{App, AppContext, HookResult, Mode, Role};
    pub use cluster_runtime::config::{Config, ConfigArgs};
    pub use cluster_runtime::platform::Platform;

    pub use crate::__private::Partitions;
    pub use cluster_runtime::membership::NodeRecord;
    pub use cluster_runtime::rpc::{HandlerError, RpcError};

    // The method attributes of an `#[cluster::app] impl` block. Inside one
    // they are consumed by `#[cluster::app]`; anywhere else they are
    // compile errors that say so.
    pub use cluster_macros::{
        handle, on_active, on_health_change, on_leader_change, on_member_join, on_member_leave,
        on_migration_complete, on_migration_start, on_own, on_placement_invalid, on_release,
        on_standby, on_start, on_stop,
    };
}

/// Runs a node with `apps` as a program's `main`: reads the configuration
/// contract (flags, environment, `--config` file), starts the platform and
/// runs until SIGTERM/SIGINT. Bad configuration (including an invalid app)
/// prints one message naming the problem and exits with status 2; nothing
/// is started. `cluster::main!` will generate exactly this call.
///
/// ```no_run
/// use cluster::prelude::*;
/// fn main() -> std::process::ExitCode {
///     cluster::run(|| Ok(vec![App::builder("counter").build()?]))
/// }
/// ```
pub fn run(apps: impl FnOnce() -> Result<Vec<App>>) -> std::process::ExitCode {
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Args {
        #[command(flatten)]
        config: ConfigArgs,
    }

    let args = Args::parse();
    init_tracing();
    let prepared = apps().and_then(|apps| Config::from_args(&args.config).map(|c| (c, apps)));
    let (config, apps) = match prepared {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let mut builder = Platform::builder().config(config);
        for app in apps {
            builder = builder.app(app);
        }
        builder.start().await?.run().await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e @ Error::Config(_)) | Err(e @ Error::Name(_)) => {
            eprintln!("error: {e}");
            std::process::ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
fn init_tracing() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
