// Generic apps are refused, once per item that carries the attribute.
#[cluster::app(mode = "spread")]
#[derive(Default)]
pub struct Cache<S> {
    store: S,
}

fn main() {}
