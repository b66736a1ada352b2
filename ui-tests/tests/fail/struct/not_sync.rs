// One instance is shared by every hook and handler, across threads.
#[cluster::app]
#[derive(Default)]
pub struct Counter {
    value: std::cell::Cell<u64>,
}

fn main() {}
