use cluster::prelude::*;

#[cluster::app]
#[derive(Default)]
pub struct Counter;

#[cluster::app]
impl Counter {
    #[on_leader_change]
    async fn leader(&self, _ctx: &AppContext) -> cluster::Result<()> {
        Ok(())
    }
}

fn main() {}
