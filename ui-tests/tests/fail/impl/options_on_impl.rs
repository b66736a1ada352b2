#[cluster::app]
#[derive(Default)]
pub struct Counter;

#[cluster::app(mode = "spread")]
impl Counter {}

fn main() {}
