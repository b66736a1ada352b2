use cluster::prelude::*;

#[cluster::app(mode = "singleton")]
#[derive(Default)]
pub struct Counter;

#[cluster::app]
impl Counter {
    #[handle]
    async fn incr(&self, _ctx: &AppContext, by: u64) -> cluster::Result<u64> {
        let local = std::rc::Rc::new(by);
        tokio_free_yield().await;
        Ok(*local)
    }
}

async fn tokio_free_yield() {}

fn main() {}
