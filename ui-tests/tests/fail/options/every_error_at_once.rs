// Every problem of one attribute is reported, each at its own tokens.
#[cluster::app(
    mode = "ring(100)",
    placement = "zone=a",
    name = "Bad Name",
    lease_ttl = "0s",
    colour = "blue",
)]
#[derive(Default)]
pub struct Cache;

fn main() {}
