//! Procedural macros of `cluster`.
//!
//! The attribute DSL (`#[cluster::app]`, `cluster::main!`) arrives with the
//! macro issue; until then apps are built with the runtime's builder API
//! (`App::builder`), which is what these macros will generate calls to.
