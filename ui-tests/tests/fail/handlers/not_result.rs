use cluster::prelude::*;

#[cluster::app(mode = "singleton")]
#[derive(Default)]
pub struct Counter;

#[cluster::app]
impl Counter {
    #[handle]
    async fn incr(&self, _ctx: &AppContext, by: u64) -> u64 {
        by
    }
}

fn main() {}
