use cluster::prelude::*;
use std::rc::Rc;

#[cluster::app]
#[derive(Default)]
pub struct Counter;

async fn pause() {}

#[cluster::app]
impl Counter {
    #[on_active]
    async fn activate(&self, _ctx: &AppContext) -> cluster::Result<()> {
        let local = Rc::new(1);
        pause().await;
        drop(local);
        Ok(())
    }
}

fn main() {}
