// `#[cfg]` on hooks: a configured-out hook is not attached; hooks of the
// same kind under exclusive cfgs are allowed.
use cluster::prelude::*;

#[cluster::app]
#[derive(Default)]
pub struct Counter;

#[cluster::app]
impl Counter {
    #[cfg(any())]
    #[on_active]
    async fn activate(&self, _ctx: &AppContext) -> cluster::Result<()> {
        Ok(())
    }

    #[cfg(not(any()))]
    #[on_active]
    async fn activate_for_real(&self, _ctx: &AppContext) -> cluster::Result<()> {
        Ok(())
    }

    #[on_standby]
    #[cfg(any())]
    async fn never(&self, _ctx: &AppContext) -> cluster::Result<()> {
        this_does_not_compile()
    }
}

fn main() {
    let app = cluster::__private::build_app::<Counter>().expect("builds");
    assert_eq!(app.name(), "counter");
}
