use cluster::prelude::*;

#[cluster::app(mode = "singleton")]
#[derive(Default)]
pub struct Counter;

#[cluster::app]
impl Counter {
    #[handle]
    async fn on_platform(&self, _ctx: &AppContext, name: String) -> cluster::Result<String> {
        Ok(name)
    }
}

fn main() {}
