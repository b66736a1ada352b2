#[cluster::app(mdoe = "singleton")]
#[derive(Default)]
pub struct Counter;

fn main() {}
