//! The method attributes used outside an `#[cluster::app] impl` block.
//!
//! Inside one, `#[cluster::app]` consumes them before they expand; so when
//! one of these runs, it was misplaced.

use proc_macro2::{Span, TokenStream};
use quote::quote;

pub fn expand(name: &str, item: TokenStream) -> TokenStream {
    let message = format!(
        "#[{name}] only works on a method of an impl block marked #[cluster::app]: put #[cluster::app] on the app's `impl` block"
    );
    let error = syn::Error::new(Span::call_site(), message).to_compile_error();
    quote! {
        #error
        #item
    }
}
