//! Procedural macros of `cluster`: `#[cluster::app]` and `cluster::main!`.
//!
//! Use them through the `cluster` crate (`#[cluster::app]`,
//! `cluster::main!`, `use cluster::prelude::*` for the method attributes);
//! `docs/dsl.md` describes every attribute and option.
//!
//! Layout: this file only has entry points. Each macro parses its input into
//! a validated model (collecting every error of the item), then generates
//! code from the model:
//!
//! - `app_struct` — `#[cluster::app(...)]` on a struct;
//! - `app_impl` — `#[cluster::app]` on the app's impl block;
//! - `main_macro` — `cluster::main!`;
//! - `stray` — the method attributes used where they do not belong.
//!
//! The grammars (mode, placement, names, durations, ops options) are the
//! runtime's own, from `cluster-spec`.

mod app_impl;
mod app_struct;
mod errors;
mod hooks;
mod main_macro;
mod opts;
mod stray;
mod suggest;

use proc_macro::TokenStream;

/// Makes a struct a cluster app, or attaches the hooks of its impl block.
///
/// ```ignore
/// #[cluster::app(mode = "singleton")]
/// #[derive(Default)]
/// pub struct Counter { value: AtomicU64 }
///
/// #[cluster::app]
/// impl Counter {
///     #[on_active]
///     async fn activate(&self, ctx: &AppContext) -> cluster::Result<()> { Ok(()) }
/// }
/// ```
///
/// See `docs/dsl.md` for every option and method attribute.
#[proc_macro_attribute]
pub fn app(args: TokenStream, item: TokenStream) -> TokenStream {
    let args = proc_macro2::TokenStream::from(args);
    let item = proc_macro2::TokenStream::from(item);
    match syn::parse2::<syn::Item>(item.clone()) {
        Ok(syn::Item::Struct(s)) => app_struct::expand(args, s).into(),
        Ok(syn::Item::Impl(i)) => app_impl::expand(args, i).into(),
        Ok(other) => {
            let error = syn::Error::new_spanned(
                item_keyword(&other),
                "#[cluster::app] goes on a struct (the app) or on its inherent impl block (its hooks and handlers)",
            )
            .to_compile_error();
            quote::quote!(#error #item).into()
        }
        // Not valid Rust: leave the item to the compiler's own error.
        Err(_) => item.into(),
    }
}

/// The tokens to point at for "wrong kind of item".
fn item_keyword(item: &syn::Item) -> proc_macro2::TokenStream {
    use quote::ToTokens;
    match item {
        syn::Item::Enum(e) => e.enum_token.to_token_stream(),
        syn::Item::Fn(f) => f.sig.fn_token.to_token_stream(),
        syn::Item::Trait(t) => t.trait_token.to_token_stream(),
        syn::Item::Union(u) => u.union_token.to_token_stream(),
        syn::Item::Mod(m) => m.mod_token.to_token_stream(),
        other => other.to_token_stream(),
    }
}

/// The program's `fn main`: runs the apps with the configuration contract
/// (flags, environment, `--config` file), exiting with status 2 and one
/// message on bad configuration.
///
/// - `cluster::main!()` runs every `#[cluster::app]` of the program (found
///   with `inventory`);
/// - `cluster::main!(apps = [Counter, Cache])` runs exactly these.
#[proc_macro]
pub fn main(input: TokenStream) -> TokenStream {
    main_macro::expand(input.into()).into()
}

macro_rules! method_attributes {
    ($($name:ident => $doc:literal,)*) => {$(
        #[doc = $doc]
        ///
        /// Only valid on a method of an `#[cluster::app]` impl block, which
        /// consumes it; anywhere else it is a compile error.
        #[proc_macro_attribute]
        pub fn $name(_args: TokenStream, item: TokenStream) -> TokenStream {
            stray::expand(stringify!($name), item.into()).into()
        }
    )*};
}

method_attributes! {
    handle => "Marks a request handler of the app.",
    on_active => "Runs when this node becomes the active instance of a singleton.",
    on_standby => "Runs when this node becomes a standby of a singleton.",
    on_leader_change => "Runs on every node when a singleton's active instance changes.",
    on_start => "Runs when a pool or ring instance starts on this node.",
    on_stop => "Runs when a pool or ring instance stops on this node.",
    on_own => "Runs when this node takes ownership of ring partitions.",
    on_release => "Runs when this node gives ring partitions up.",
    on_member_join => "Runs when a node joins the platform.",
    on_member_leave => "Runs when a node leaves the platform.",
    on_health_change => "Runs when the app's health on this node changes.",
    on_migration_start => "Runs before the app's instance migrates between nodes (an error vetoes).",
    on_migration_complete => "Runs after the app's instance migrated between nodes.",
    on_placement_invalid => "Runs when no node satisfies the app's placement.",
}
