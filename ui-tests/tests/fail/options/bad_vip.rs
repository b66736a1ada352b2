#[cluster::app(vip = "192.168.1.100 dev eth0")]
#[derive(Default)]
pub struct Gateway;

fn main() {}
