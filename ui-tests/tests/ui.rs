//! Compile-time behaviour of the `cluster` macros (trybuild).
//!
//! `pass/` must compile (and its `main` run); every `fail/<category>/` file
//! holds one mistake and its reviewed `.stderr`. Refresh snapshots with
//! `TRYBUILD=overwrite cargo test --manifest-path ui-tests/Cargo.toml`, then
//! review every changed `.stderr`: it must point at the offending tokens.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/pass/*.rs");
    t.compile_fail("tests/fail/*/*.rs");
}
