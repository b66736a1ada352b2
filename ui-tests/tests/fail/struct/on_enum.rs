#[cluster::app]
#[derive(Default)]
pub enum Counter {
    #[default]
    Zero,
}

fn main() {}
