#[cluster::app(mode = "singleton", placement = "label=ssd", mode = "spread")]
#[derive(Default)]
pub struct Counter;

fn main() {}
