#[cluster::app(mode = "leader")]
#[derive(Default)]
pub struct Counter;

fn main() {}
