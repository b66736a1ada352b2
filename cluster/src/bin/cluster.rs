//! The `cluster` command-line tool.
fn main() {}
