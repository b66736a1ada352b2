// The app struct is instantiated with `Default::default()`.
#[cluster::app]
pub struct Counter {
    value: u64,
}

fn main() {}
