#[cluster::app(mode = "singleton", services(http(port = 8080, weight = 10)))]
#[derive(Default)]
pub struct Web;

fn main() {}
