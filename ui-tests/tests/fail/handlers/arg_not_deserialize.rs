use cluster::prelude::*;

pub struct Request {
    pub by: u64,
}

#[cluster::app]
#[derive(Default)]
pub struct Counter;

#[cluster::app]
impl Counter {
    #[handle]
    async fn incr(&self, _ctx: &AppContext, req: Request) -> cluster::Result<u64> {
        Ok(req.by)
    }
}

fn main() {}
