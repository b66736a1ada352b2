use cluster::prelude::*;

#[derive(Default)]
pub struct Counter;

impl Counter {
    #[on_active]
    async fn activate(&self, _ctx: &AppContext) -> cluster::Result<()> {
        Ok(())
    }
}

fn main() {}
