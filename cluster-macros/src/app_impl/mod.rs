//! `#[cluster::app]` on the app's inherent impl block: method attributes →
//! [`parse::ImplModel`] → the `AppImpl` impl that attaches the hooks.

mod gen;
mod parse;

use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemImpl;

use crate::errors::Errors;

/// Expands the impl-block attribute. The impl block is always emitted with
/// our method attributes removed; on error no `AppImpl` is generated (the
/// app then simply has no hooks), so only the reported errors appear.
pub fn expand(args: TokenStream, mut item: ItemImpl) -> TokenStream {
    let mut errors = Errors::new();
    if !args.is_empty() {
        errors.spanned(
            &args,
            "options go on the app's struct: #[cluster::app(mode = \"...\")] struct App; the impl block takes a bare #[cluster::app]",
        );
    }
    let model = parse::parse(&mut item, &mut errors);
    let generated = match model {
        Some(model) if errors.is_empty() => gen::generate(&model),
        _ => TokenStream::new(),
    };
    let errors = errors.to_compile_errors();
    quote! {
        #item
        #errors
        #generated
    }
}
