#[cluster::app(mode = "ring(100)")]
#[derive(Default)]
pub struct Cache;

fn main() {}
