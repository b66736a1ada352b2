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

use super::parse::{HandlerFn, HookFn, ImplModel};
use crate::hooks::Runtime;

pub fn generate(model: &ImplModel) -> TokenStream {
    let hooks = model.hooks.iter().map(hook);
    let handlers = model.handlers.iter().map(handler);
    let client_methods = model.handlers.iter().map(client_method);
    let self_ty = &model.self_ty;
    // Only with handlers: an impl block of a type that is not an app then
    // adds no "no such type `XClient`" error to "not a cluster app".
    let client = (!model.handlers.is_empty()).then(|| {
        let client = client_path(self_ty);
        quote! {
            impl #client {
                #(#client_methods)*
            }
        }
    });
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

                fn __handlers(
                    app: ::cluster::__private::Arc<Self>,
                ) -> ::cluster::__private::Handlers<::cluster::__private::AppContext> {
                    let handlers = ::cluster::__private::Handlers::new();
                    #(#handlers)*
                    let _ = &app;
                    handlers
                }
            }

            #client
        };
    }
}

/// `{App}Client` next to the app type's path (`a::Counter` → `a::CounterClient`).
fn client_path(self_ty: &syn::Type) -> TokenStream {
    match self_ty {
        syn::Type::Path(p) => {
            let mut path = p.path.clone();
            if let Some(last) = path.segments.last_mut() {
                last.ident = format_ident!("{}Client", last.ident);
                last.arguments = syn::PathArguments::None;
            }
            quote!(#path)
        }
        other => quote!(#other),
    }
}

/// Registers one handler: decode the request, call the method with the
/// app's context, encode the response. Spanned at `async` (a `!Send`
/// future), the request type (not `Deserialize`) and the return type.
fn handler(h: &HandlerFn) -> TokenStream {
    let cfgs = &h.cfgs;
    let wire = &h.wire;
    let method = &h.method;
    let ring_check = h.key.as_ref().map(|(span, _)| {
        quote_spanned! {*span=>
            let () = ::cluster::__private::require_ring::<Self>();
        }
    });
    let ctx_arg = quote_spanned!(h.ctx_span=> &__ctx);
    let (param, arg) = match &h.request {
        Some((name, ty)) => (quote!(#name: #ty), quote!(, #name)),
        None => (quote!(_: ()), TokenStream::new()),
    };
    let ret_span = h.ret.span();
    let output = quote_spanned! {ret_span=>
        ::cluster::__private::handler_output(__output)
    };
    let register = quote_spanned! {h.async_span=>
        handlers.handle(#wire, {
            let __app = ::cluster::__private::share(&app);
            move |__ctx: ::cluster::__private::AppContext, #param| {
                let __app = ::cluster::__private::share(&__app);
                async move {
                    let __output = <Self>::#method(&*__app, #ctx_arg #arg).await;
                    #output
                }
            }
        })
    };
    quote! {
        #(#cfgs)*
        #ring_check
        #(#cfgs)*
        let handlers = #register;
    }
}

/// The client method of one handler: same name, the request as its only
/// argument, the response or an `RpcError`.
fn client_method(h: &HandlerFn) -> TokenStream {
    let cfgs = &h.cfgs;
    let docs = &h.docs;
    let wire = &h.wire;
    let method = &h.method;
    let resp = response_type(&h.ret);
    let key = h.key.as_ref().map(|(_, expr)| quote!(.key(&(#expr))));
    let (param, send) = match &h.request {
        Some((name, ty)) => (quote!(#name: #ty), quote_spanned!(h.method.span()=> &#name)),
        None => (TokenStream::new(), quote_spanned!(h.method.span()=> &())),
    };
    let note = format!(" Calls `{wire}` on the app (routed by its mode).");
    // Spanned at the handler's name: a request or response type the client
    // cannot encode or decode is reported there.
    let body = quote_spanned! {h.method.span()=>
        ::cluster::__private::app_ref(self)
            .method(#wire)
            #key
            .send(#send)
            .await
    };
    quote! {
        #(#cfgs)*
        #(#docs)*
        #[doc = ""]
        #[doc = #note]
        pub async fn #method(&self, #param) -> ::cluster::__private::Result<#resp, ::cluster::__private::RpcError> {
            #body
        }
    }
}

/// `T` of `Result<T>` / `Result<T, E>` as written, else the projection
/// through `HandlerOutput` (type aliases).
fn response_type(ret: &syn::Type) -> TokenStream {
    if let syn::Type::Path(p) = ret {
        if let Some(last) = p.path.segments.last() {
            if last.ident == "Result" {
                if let syn::PathArguments::AngleBracketed(args) = &last.arguments {
                    if let Some(syn::GenericArgument::Type(t)) = args.args.first() {
                        return quote!(#t);
                    }
                }
            }
        }
    }
    quote_spanned!(ret.span()=> <#ret as ::cluster::__private::HandlerOutput>::Ok)
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
