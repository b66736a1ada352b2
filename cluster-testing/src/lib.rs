//! Test harness for `cluster` apps.
