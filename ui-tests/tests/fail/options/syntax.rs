#[cluster::app(mode = = "singleton")]
#[derive(Default)]
pub struct Counter;

fn main() {}
