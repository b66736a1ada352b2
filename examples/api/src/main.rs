//! A stateless API on every eligible node (`spread`): calls are spread over
//! the instances by a NATS queue group, and any app calls it through the
//! generated `GreeterClient`.
//!
//! ```sh
//! api --nats nats://127.0.0.1:4222 --node n1 --label zone=a --health-addr 127.0.0.1:8081
//! nats req default._.api.greeter.greet '{"name":"ada","excited":true}'
//! ```
//!
//! From another app: `cluster::call::<Greeter>(ctx).greet(Greeting { .. }).await?`.

use cluster::prelude::*;
use serde::{Deserialize, Serialize};

/// What `greet` takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Greeting {
    /// Who to greet.
    pub name: String,
    /// Add an exclamation mark.
    #[serde(default)]
    pub excited: bool,
}

/// Greets; runs on every node labelled `zone=a`.
#[cluster::app(mode = "spread", placement = "label=zone=a")]
#[derive(Debug, Default)]
pub struct Greeter;

#[cluster::app]
impl Greeter {
    #[on_start]
    async fn started(&self, ctx: &AppContext) -> cluster::Result<()> {
        println!("{}: greeter instance running", ctx.node());
        Ok(())
    }

    /// Says hello, and which node answered.
    #[handle]
    async fn greet(&self, ctx: &AppContext, g: Greeting) -> cluster::Result<String> {
        let end = if g.excited { "!" } else { "." };
        Ok(format!("hello {}{end} (from {})", g.name, ctx.node()))
    }
}

cluster::main!();
