use cluster::prelude::*;

pub struct Total(pub u64);

#[cluster::app]
#[derive(Default)]
pub struct Counter;

#[cluster::app]
impl Counter {
    #[handle]
    async fn incr(&self, _ctx: &AppContext, by: u64) -> cluster::Result<Total> {
        Ok(Total(by))
    }
}

fn main() {}
