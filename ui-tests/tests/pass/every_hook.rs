// Every hook, each on a mode it fits, with its documented signature.
use cluster::prelude::*;

#[cluster::app(mode = "singleton")]
#[derive(Default)]
pub struct Single;

#[cluster::app]
impl Single {
    #[on_active]
    async fn a(&self, _ctx: &AppContext) -> cluster::Result<()> { Ok(()) }
    #[on_standby]
    async fn b(&self, _ctx: &AppContext) -> cluster::Result<()> { Ok(()) }
    #[on_leader_change]
    async fn c(&self, _ctx: &AppContext, _leader: Option<String>) -> cluster::Result<()> { Ok(()) }
    #[on_member_join]
    async fn d(&self, _ctx: &AppContext, _node: NodeRecord) -> cluster::Result<()> { Ok(()) }
    #[on_member_leave]
    async fn e(&self, _ctx: &AppContext, _node: NodeRecord) -> cluster::Result<()> { Ok(()) }
    #[on_health_change]
    async fn f(&self, _ctx: &AppContext, _healthy: bool) -> cluster::Result<()> { Ok(()) }
    #[on_migration_start]
    async fn g(&self, _ctx: &AppContext, _from: String, _to: String) -> cluster::Result<()> { Ok(()) }
    #[on_migration_complete]
    async fn h(&self, _ctx: &AppContext, _from: String, _to: String) -> cluster::Result<()> { Ok(()) }
    #[on_placement_invalid]
    async fn i(&self, _ctx: &AppContext, _reason: String) -> cluster::Result<()> { Ok(()) }
}

#[cluster::app(mode = "ring(8)")]
#[derive(Default)]
pub struct Ring;

#[cluster::app]
impl Ring {
    #[on_start]
    async fn a(&self, _ctx: &AppContext) -> cluster::Result<()> { Ok(()) }
    #[on_stop]
    async fn b(&self, _ctx: &AppContext) -> cluster::Result<()> { Ok(()) }
    #[on_own]
    async fn c(&self, _ctx: &AppContext, _partitions: Partitions) -> cluster::Result<()> { Ok(()) }
    #[on_release]
    async fn d(&self, _ctx: &AppContext, _partitions: Partitions) -> cluster::Result<()> { Ok(()) }
}

#[derive(Debug)]
struct MyError;
impl std::fmt::Display for MyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("mine") }
}
impl std::error::Error for MyError {}

#[cluster::app(mode = "replicas(2)")]
#[derive(Default)]
pub struct Pool;

#[cluster::app]
impl Pool {
    // Any `Result<(), E>` whose error boxes works.
    #[on_start]
    async fn a(&self, _ctx: &AppContext) -> Result<(), MyError> { Ok(()) }
    #[on_migration_start]
    async fn b(&self, _ctx: &AppContext, _from: String, _to: String) -> Result<(), Box<dyn std::error::Error + Send + Sync>> { Ok(()) }
}

fn main() {
    for app in [
        cluster::__private::build_app::<Single>(),
        cluster::__private::build_app::<Pool>(),
        cluster::__private::build_app::<Ring>(),
    ] {
        app.expect("builds");
    }
}
