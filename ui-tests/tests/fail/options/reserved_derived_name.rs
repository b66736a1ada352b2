// The default wire name is the struct name in kebab-case: `events`, which
// platform resources use.
#[cluster::app]
#[derive(Default)]
pub struct Events;

fn main() {}
