//! Test harness for `cluster` apps.

pub mod process;
