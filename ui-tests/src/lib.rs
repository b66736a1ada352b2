//! Compile-time tests of the `cluster` macros live in `tests/`.
