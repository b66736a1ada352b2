use cluster::prelude::*;

#[cluster::app]
#[derive(Default)]
pub struct Counter;

#[cluster::app]
impl Counter {
    #[on_active]
    async fn activate(&self, _ctx: &AppContext) -> cluster::Result<()> {
        Ok(())
    }

    #[on_active]
    async fn also_activate(&self, _ctx: &AppContext) -> cluster::Result<()> {
        Ok(())
    }
}

fn main() {}
