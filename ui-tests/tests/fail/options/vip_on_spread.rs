#[cluster::app(mode = "spread", vip = "192.168.1.100/24 dev eth0")]
#[derive(Default)]
pub struct Api;

fn main() {}
