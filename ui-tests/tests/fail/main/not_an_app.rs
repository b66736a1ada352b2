#[derive(Default)]
pub struct Counter;

cluster::main!(apps = [Counter]);
