#[cluster::app(name = "My_App")]
#[derive(Default)]
pub struct MyApp;

fn main() {}
