#[cluster::app(mode = "replicas(0)")]
#[derive(Default)]
pub struct Workers;

fn main() {}
