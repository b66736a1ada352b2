// The impl block of a generic struct is refused too (the struct has its
// own error, see struct/generic.rs).
#[derive(Default)]
pub struct Cache<S> {
    store: S,
}

#[cluster::app]
impl<S> Cache<S> {
    fn store(&self) -> &S {
        &self.store
    }
}

fn main() {}
