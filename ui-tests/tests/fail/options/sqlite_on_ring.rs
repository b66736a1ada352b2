#[cluster::app(mode = "ring(64)", sqlite = "/var/lib/cache/data.db")]
#[derive(Default)]
pub struct Cache;

fn main() {}
