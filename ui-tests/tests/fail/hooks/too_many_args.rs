use cluster::prelude::*;

#[cluster::app]
#[derive(Default)]
pub struct Counter;

#[cluster::app]
impl Counter {
    #[on_active]
    async fn activate(&self, _ctx: &AppContext, _epoch: u64) -> cluster::Result<()> {
        Ok(())
    }
}

fn main() {}
