#[cluster::app(hook_timeout = "30")]
#[derive(Default)]
pub struct Counter;

fn main() {}
