#[cluster::app(backend = "kubernetes:myapp")]
#[derive(Default)]
pub struct MyApp;

fn main() {}
