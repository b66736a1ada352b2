use cluster::prelude::*;

#[cluster::app(mode = "spread")]
#[derive(Default)]
pub struct Api;

#[cluster::app]
impl Api {
    #[on_active]
    async fn activate(&self, _ctx: &AppContext) -> cluster::Result<()> {
        Ok(())
    }
}

fn main() {}
