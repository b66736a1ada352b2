#[cluster::app]
#[derive(Default)]
pub struct Counter;

pub trait Named {
    fn name(&self) -> &'static str;
}

#[cluster::app]
impl Named for Counter {
    fn name(&self) -> &'static str {
        "counter"
    }
}

fn main() {}
