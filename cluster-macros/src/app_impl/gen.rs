//! Code for an app's impl block: `impl AppImpl` attaching each hook to the
//! runtime builder, with one mode check per hook.
//!
//! Spans are chosen so the compiler's own errors land on the user's tokens:
//! the mode check on the hook attribute, a `!Send` future on `async`, an
//! argument of the wrong type on that parameter's type, a wrong return type
//! on the return type.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use super::parse::{HookFn, ImplModel};
use crate::hooks::Runtime;

pub fn generate(model: &ImplModel) -> TokenStream {
    let hooks = model.hooks.iter().map(hook);
    let self_ty = &model.self_ty;
    // Spanned at the type: "`X` is not a cluster app" lands on `impl X`.
    let header = quote_spanned! {self_ty.span()=>
        impl ::cluster::__private::AppImpl for #self_ty
    };
    quote! {
        const _: () = {
            #[automatically_derived]
            #header {
                fn __hooks(
                    app: ::cluster::__private::Arc<Self>,
                    builder: ::cluster::__private::AppBuilder,
                ) -> ::cluster::__private::AppBuilder {
                    #(#hooks)*
                    let _ = &app;
                    builder
                }
            }
        };
    }
}

fn hook(h: &HookFn) -> TokenStream {
    let cfgs = &h.cfgs;
    let name = h.def.name;
    // Hooks that fit every mode need no check (and so add no error when the
    // type is not an app at all: `impl AppImpl` already reports that).
    let check = (!universal(name)).then(|| {
        let check = format_ident!("{}", name, span = h.attr_span);
        quote_spanned! {h.attr_span=>
            let () = ::cluster::__private::hooks::#check::<Self>();
        }
    });

    // `ctx` by reference, then the hook's own arguments, each spanned at the
    // user's parameter type.
    let mut params = vec![quote!(ctx: ::cluster::__private::AppContext)];
    let ctx_span = h.arg_spans.first().copied().unwrap_or(h.async_span);
    let mut args = vec![quote_spanned!(ctx_span=> &ctx)];
    for (i, ((_, arg), span)) in h
        .def
        .args
        .iter()
        .zip(h.arg_spans.iter().skip(1))
        .enumerate()
    {
        let var = format_ident!("arg{}", i, span = *span);
        let ty = arg.ty();
        params.push(quote!(#var: #ty));
        args.push(quote!(#var));
    }
    let method = &h.method;
    let output = quote_spanned! {h.ret_span=>
        ::cluster::__private::hook_output(output)
    };
    let closure = quote_spanned! {h.async_span=>
        {
            let app = ::cluster::__private::share(&app);
            move |#(#params),*| {
                let app = ::cluster::__private::share(&app);
                async move {
                    let output = <Self>::#method(&*app, #(#args),*).await;
                    #output
                }
            }
        }
    };
    // The whole call is spanned at `async`: a future that is not `Send`
    // fails the builder's bound, and that error lands there.
    let register = match h.def.runtime {
        Runtime::Builder => {
            let builder_method = format_ident!("{}", name, span = h.async_span);
            quote_spanned! {h.async_span=> builder.#builder_method(#closure) }
        }
        Runtime::Later => {
            let later = if h.def.args.len() == 2 {
                quote!(later_hook2)
            } else {
                quote!(later_hook)
            };
            quote_spanned! {h.async_span=>
                ::cluster::__private::#later(
                    builder,
                    <Self as ::cluster::__private::AppSpec>::NAME,
                    #name,
                    #closure,
                )
            }
        }
    };
    quote! {
        #(#cfgs)*
        #check
        #(#cfgs)*
        let builder = #register;
    }
}

fn universal(hook: &str) -> bool {
    cluster_spec::fit::hook(hook).is_some_and(|h| h.fits_every_mode())
}
