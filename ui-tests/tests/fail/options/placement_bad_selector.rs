#[cluster::app(mode = "spread", placement = "label=zone=us east")]
#[derive(Default)]
pub struct Api;

fn main() {}
