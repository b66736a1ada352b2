use cluster::prelude::*;

#[cluster::app(mode = "singleton")]
#[derive(Default)]
pub struct Counter;

#[cluster::app]
impl Counter {
    #[on_own]
    async fn own(&self, _ctx: &AppContext, _partitions: Partitions) -> cluster::Result<()> {
        Ok(())
    }
}

fn main() {}
