//! `cluster::main!()` and `cluster::main!(apps = [A, B])`: a `fn main` that
//! runs the apps with `cluster::run` (configuration contract, exit status 2
//! on bad configuration).

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{bracketed, Ident, Token, TypePath};

use crate::errors::Errors;
use crate::suggest::did_you_mean;

/// What `main!` was asked to run.
enum Apps {
    /// Every app registered through `inventory`.
    Registered,
    /// Exactly these.
    Explicit(Vec<TypePath>),
}

struct Input {
    key: Ident,
    apps: Punctuated<TypePath, Token![,]>,
}

impl Parse for Input {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let key: Ident = input.parse()?;
        if key != "apps" {
            return Err(syn::Error::new(
                key.span(),
                format!(
                    "unknown argument `{key}`; cluster::main! takes nothing or `apps = [A, B]`{}",
                    did_you_mean(&key.to_string(), &["apps"])
                ),
            ));
        }
        input.parse::<Token![=]>()?;
        let content;
        bracketed!(content in input);
        let apps = Punctuated::parse_terminated(&content)?;
        input.parse::<Option<Token![,]>>()?;
        Ok(Input { key, apps })
    }
}

pub fn expand(input: TokenStream) -> TokenStream {
    let mut errors = Errors::new();
    let apps = parse(input, &mut errors);
    if !errors.is_empty() {
        // A stub `main` so the only errors are ours.
        let errors = errors.to_compile_errors();
        return quote! {
            #errors
            fn main() {}
        };
    }
    let body = match apps {
        Apps::Registered => quote! { ::cluster::__private::main_registered() },
        Apps::Explicit(apps) => {
            // Each entry spanned at the user's path: a type that is not an
            // app is reported there.
            let builds = apps.iter().map(|path| {
                quote_spanned! {path.span()=>
                    ::cluster::__private::build_app::<#path>
                        as fn() -> ::cluster::__private::Result<::cluster::__private::App>
                }
            });
            quote! { ::cluster::__private::main_explicit(&[#(#builds),*]) }
        }
    };
    quote! {
        fn main() -> ::cluster::__private::ExitCode {
            #body
        }
    }
}

fn parse(input: TokenStream, errors: &mut Errors) -> Apps {
    if input.is_empty() {
        return Apps::Registered;
    }
    let parsed: Input = match syn::parse2(input) {
        Ok(p) => p,
        Err(e) => {
            errors.push(e);
            return Apps::Registered;
        }
    };
    if parsed.apps.is_empty() {
        errors.at(
            parsed.key.span(),
            "`apps = []` names no app: list at least one, or write cluster::main!() to run every registered app",
        );
    }
    let mut seen: Vec<String> = Vec::new();
    for path in &parsed.apps {
        let text = quote!(#path).to_string();
        if seen.contains(&text) {
            errors.spanned(path, format!("`{text}` is listed twice"));
        }
        seen.push(text);
    }
    Apps::Explicit(parsed.apps.into_iter().collect())
}
