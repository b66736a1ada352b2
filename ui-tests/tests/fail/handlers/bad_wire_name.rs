use cluster::prelude::*;

#[cluster::app(mode = "singleton")]
#[derive(Default)]
pub struct Counter;

#[cluster::app]
impl Counter {
    #[handle(name = "incr.by")]
    async fn incr(&self, _ctx: &AppContext, by: u64) -> cluster::Result<u64> {
        Ok(by)
    }
}

fn main() {}
