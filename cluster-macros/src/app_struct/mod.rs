//! `#[cluster::app(...)]` on a struct: options → [`model::AppModel`] →
//! the `AppSpec` impl, mode markers and the `inventory` registration.

mod gen;
mod model;
mod parse;

use proc_macro2::TokenStream;
use quote::quote;
use syn::ItemStruct;

use crate::errors::Errors;

/// Expands the struct attribute. On any error the struct is emitted
/// unchanged next to the errors, with a fallback `AppSpec` impl that
/// satisfies every check, so no follow-on errors appear.
pub fn expand(args: TokenStream, item: ItemStruct) -> TokenStream {
    let mut errors = Errors::new();
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        errors.spanned(
            &item.generics,
            "a cluster app cannot be generic: the struct is instantiated once per node with `Default::default()` and registered under one wire name; wrap a concrete type instead",
        );
    }
    let model = parse::parse(args, &item.ident, &mut errors);
    let generated = match model {
        Some(model) if errors.is_empty() => gen::generate(&model, &item.vis),
        _ if item.generics.params.is_empty() => gen::fallback(&item.ident, &item.vis),
        _ => TokenStream::new(),
    };
    let errors = errors.to_compile_errors();
    quote! {
        #item
        #errors
        #generated
    }
}
