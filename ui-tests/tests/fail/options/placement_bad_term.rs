#[cluster::app(mode = "spread", placement = "zone=us-east-1a")]
#[derive(Default)]
pub struct Api;

fn main() {}
