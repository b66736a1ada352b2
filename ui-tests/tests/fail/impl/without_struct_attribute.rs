use cluster::prelude::*;

#[derive(Default)]
pub struct Counter;

#[cluster::app]
impl Counter {
    #[on_member_join]
    async fn joined(&self, _ctx: &AppContext, _node: NodeRecord) -> cluster::Result<()> {
        Ok(())
    }
}

fn main() {}
