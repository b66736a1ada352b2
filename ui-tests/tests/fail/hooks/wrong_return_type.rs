use cluster::prelude::*;

#[cluster::app]
#[derive(Default)]
pub struct Counter;

#[cluster::app]
impl Counter {
    #[on_active]
    async fn activate(&self, _ctx: &AppContext) -> cluster::Result<u64> {
        Ok(1)
    }
}

fn main() {}
