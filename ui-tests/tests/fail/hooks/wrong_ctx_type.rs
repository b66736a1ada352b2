use cluster::prelude::*;

#[cluster::app]
#[derive(Default)]
pub struct Counter;

#[cluster::app]
impl Counter {
    #[on_active]
    async fn activate(&self, _ctx: &Platform) -> cluster::Result<()> {
        Ok(())
    }
}

fn main() {}
