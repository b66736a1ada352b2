use cluster::prelude::*;

#[cluster::app(mode = "singleton")]
#[derive(Default)]
pub struct Counter;

#[cluster::app]
impl Counter {
    #[handle(key = key)]
    async fn get(&self, _ctx: &AppContext, key: String) -> cluster::Result<Option<String>> {
        Ok(Some(key))
    }
}

fn main() {}
