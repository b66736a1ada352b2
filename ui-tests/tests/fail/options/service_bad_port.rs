#[cluster::app(services(http(port = 70000, protocol = "http")))]
#[derive(Default)]
pub struct Web;

fn main() {}
