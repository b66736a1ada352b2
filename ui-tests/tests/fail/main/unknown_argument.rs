#[cluster::app]
#[derive(Default)]
pub struct Counter;

cluster::main!(app = [Counter]);
