//! A node process used by the harness.
fn main() {}
