use cluster::prelude::*;

#[cluster::app]
#[derive(Default)]
pub struct Counter {
    activations: u64,
}

#[cluster::app]
impl Counter {
    #[on_active]
    async fn activate(&mut self, _ctx: &AppContext) -> cluster::Result<()> {
        self.activations += 1;
        Ok(())
    }
}

fn main() {}
