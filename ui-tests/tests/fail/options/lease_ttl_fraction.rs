#[cluster::app(lease_ttl = "1500ms")]
#[derive(Default)]
pub struct Counter;

fn main() {}
