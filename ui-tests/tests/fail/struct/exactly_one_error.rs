// A mistake in the struct attribute is one error: the impl block, its hooks
// and `main!` naming the app produce none of their own.
use cluster::prelude::*;

#[cluster::app(mode = "singelton")]
#[derive(Default)]
pub struct Counter;

#[cluster::app]
impl Counter {
    #[on_active]
    async fn activate(&self, _ctx: &AppContext) -> cluster::Result<()> {
        Ok(())
    }

    #[on_own]
    async fn own(&self, _ctx: &AppContext, _partitions: Partitions) -> cluster::Result<()> {
        Ok(())
    }
}

cluster::main!(apps = [Counter]);
