// An app needs no impl block, and the impl block may come first.
use cluster::prelude::*;

#[cluster::app]
impl Later {
    #[on_active]
    async fn activate(&self, _ctx: &AppContext) -> cluster::Result<()> {
        Ok(())
    }
}

#[cluster::app(mode = "singleton")]
#[derive(Default)]
pub struct Later;

#[cluster::app(mode = "spread")]
#[derive(Default)]
pub struct Bare;

fn main() {
    cluster::__private::build_app::<Later>().expect("builds");
    cluster::__private::build_app::<Bare>().expect("builds");
}
