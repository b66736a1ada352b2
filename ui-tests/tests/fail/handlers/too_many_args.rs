use cluster::prelude::*;

#[cluster::app(mode = "singleton")]
#[derive(Default)]
pub struct Counter;

#[cluster::app]
impl Counter {
    #[handle]
    async fn add(&self, _ctx: &AppContext, a: u64, b: u64) -> cluster::Result<u64> {
        Ok(a + b)
    }
}

fn main() {}
