//! Code for an app struct: `impl AppSpec` (name, builder, hooks probe), the
//! hook markers that fit its mode, `RingApp` for ring apps, and the
//! `inventory` registration — all inside `const _: () = { ... };`.

use cluster_spec::Mode;
use proc_macro2::{Ident, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::Visibility;

use super::model::{AppModel, ServiceModel};
use crate::hooks::HOOKS;

/// The code for a valid app.
pub fn generate(model: &AppModel, vis: &Visibility) -> TokenStream {
    let ident = &model.ident;
    let partitions = match model.mode {
        Mode::Ring(p) => Some(p),
        _ => None,
    };
    let (client, remote) = client(ident, vis, &model.name, partitions);
    let builder = builder_calls(model, &model.name);
    let spec = app_spec(ident, &model.name, builder);
    let markers = markers(ident, |hook| {
        cluster_spec::fit::hook_fits(hook, model.mode).is_ok()
    });
    let ring = matches!(model.mode, Mode::Ring(_)).then(|| {
        quote! { impl ::cluster::__private::RingApp for #ident {} }
    });
    quote! {
        #client
        const _: () = {
            #spec
            #remote
            #markers
            #ring
            ::cluster::__private::inventory::submit! {
                ::cluster::__private::Registration::of::<#ident>()
            }
        };
    }
}

/// The code for an app whose options have errors: the same traits, with
/// every hook allowed and no registration, so the only errors the user
/// sees are the ones about the options.
pub fn fallback(ident: &Ident, vis: &Visibility) -> TokenStream {
    let name = cluster_spec::naming::kebab_case(&ident.to_string());
    let spec = app_spec(ident, &name, TokenStream::new());
    let markers = markers(ident, |_| true);
    let (client, remote) = client(ident, vis, &name, None);
    quote! {
        #client
        const _: () = {
            #spec
            #remote
            #markers
            impl ::cluster::__private::RingApp for #ident {}
        };
    }
}

fn app_spec(ident: &Ident, name: &str, builder: TokenStream) -> TokenStream {
    // The impl header is spanned at the struct's name: a missing `Default`
    // (or a `!Send` field) is reported there.
    let header = quote_spanned! {ident.span()=>
        impl ::cluster::__private::AppSpec for #ident
    };
    quote! {
        #[automatically_derived]
        #header {
            const NAME: &'static str = #name;

            fn __builder() -> ::cluster::__private::Result<::cluster::__private::AppBuilder> {
                let builder = ::cluster::__private::App::builder(#name);
                #builder
                ::cluster::__private::Ok(builder)
            }

            fn __attach(
                app: ::cluster::__private::Arc<Self>,
                builder: ::cluster::__private::AppBuilder,
            ) -> ::cluster::__private::AppBuilder {
                #[allow(unused_imports)]
                use ::cluster::__private::{AttachImpl as _, AttachNone as _};
                (&::cluster::__private::Probe::<Self>::new()).attach(app, builder)
            }

            fn __handlers(
                app: ::cluster::__private::Arc<Self>,
            ) -> ::cluster::__private::Handlers<::cluster::__private::AppContext> {
                #[allow(unused_imports)]
                use ::cluster::__private::{AttachImpl as _, AttachNone as _};
                (&::cluster::__private::Probe::<Self>::new()).handlers(app)
            }
        }
    }
}

/// The app's public `{App}Client` (with the struct's visibility) and, for
/// the `const _` block, its `TypedClient` and the app's `RemoteApp` impls.
fn client(
    ident: &Ident,
    vis: &Visibility,
    name: &str,
    partitions: Option<u32>,
) -> (TokenStream, TokenStream) {
    let client = format_ident!("{}Client", ident);
    let doc = format!(
        "The typed client of [`{ident}`] (app `{name}`): one method per `#[handle]` method. Get one with `cluster::call::<{ident}>(ctx)`."
    );
    let partitions = match partitions {
        Some(p) => quote!(::cluster::__private::Some(#p)),
        None => quote!(::cluster::__private::None),
    };
    let public = quote! {
        #[doc = #doc]
        #[derive(::core::clone::Clone, ::core::fmt::Debug)]
        #vis struct #client(::cluster::__private::AppRef);
    };
    let impls = quote! {
        impl #client {
            /// The same client, calling the app on platform `platform`
            /// (across a leaf connection).
            pub fn on_platform(&self, platform: &str) -> Self {
                ::cluster::__private::TypedClient::on_platform(self, platform)
            }

            /// The same client with deadline `deadline` for its calls.
            pub fn with_deadline(&self, deadline: ::cluster::__private::Duration) -> Self {
                ::cluster::__private::TypedClient::with_deadline(self, deadline)
            }
        }

        #[automatically_derived]
        impl ::cluster::__private::TypedClient for #client {
            fn from_app(app: ::cluster::__private::AppRef) -> Self {
                #client(app)
            }
            fn app_ref(&self) -> &::cluster::__private::AppRef {
                &self.0
            }
        }

        #[automatically_derived]
        impl ::cluster::__private::RemoteApp for #ident {
            const NAME: &'static str = #name;
            const PARTITIONS: ::cluster::__private::Option<u32> = #partitions;
            type Client = #client;
        }
    };
    (public, impls)
}

fn markers(ident: &Ident, fits: impl Fn(&str) -> bool) -> TokenStream {
    HOOKS
        .iter()
        .filter(|h| fits(h.name) && !universal(h.name))
        .map(|h| {
            let marker = format_ident!("{}", h.marker);
            quote! { impl ::cluster::__private::hooks::#marker for #ident {} }
        })
        .collect()
}

/// Hooks that fit every mode have no marker trait.
fn universal(hook: &str) -> bool {
    cluster_spec::fit::hook(hook).is_some_and(|h| h.fits_every_mode())
}

fn builder_calls(model: &AppModel, name: &str) -> TokenStream {
    let mut calls = TokenStream::new();
    let mode = match model.mode {
        Mode::Singleton => quote!(Singleton),
        Mode::Spread => quote!(Spread),
        Mode::Replicas(n) => quote!(Replicas(#n)),
        Mode::Ring(p) => quote!(Ring(#p)),
    };
    calls.extend(quote! {
        let builder = builder.mode(::cluster::__private::Mode::#mode);
    });
    if let Some(p) = &model.placement {
        calls.extend(quote! { let builder = builder.placement(#p); });
    }
    if let Some(d) = model.lease_ttl {
        let ms = d.as_millis() as u64;
        calls.extend(quote! {
            let builder = builder.lease_ttl(::cluster::__private::Duration::from_millis(#ms));
        });
    }
    if let Some(d) = model.hook_timeout {
        let ms = d.as_millis() as u64;
        calls.extend(quote! {
            let builder = builder.hook_timeout(::cluster::__private::Duration::from_millis(#ms));
        });
    }
    for (method, value) in [
        ("sqlite", &model.sqlite),
        ("vip", &model.vip),
        ("backend", &model.backend),
    ] {
        if let Some(v) = value {
            let method = format_ident!("{method}");
            calls.extend(quote! { let builder = builder.#method(#v); });
        }
    }
    if !model.services.is_empty() {
        let services = model.services.iter().map(service);
        calls.extend(quote! {
            let builder = ::cluster::__private::services(
                builder,
                #name,
                &[#(#services),*],
            )?;
        });
    }
    calls
}

fn service(s: &ServiceModel) -> TokenStream {
    let ServiceModel {
        name,
        port,
        protocol,
        internal,
        ..
    } = s;
    let path = option(s.path.as_ref().map(|p| quote!(#p)));
    let weight = option(s.weight.map(|w| quote!(#w)));
    let tags = &s.tags;
    let (keys, values): (Vec<_>, Vec<_>) = s.metadata.iter().cloned().unzip();
    quote! {
        ::cluster::__private::ServiceSpec {
            name: #name,
            port: #port,
            protocol: #protocol,
            path: #path,
            tags: &[#(#tags),*],
            metadata: &[#((#keys, #values)),*],
            internal: #internal,
            weight: #weight,
        }
    }
}

fn option(value: Option<TokenStream>) -> TokenStream {
    match value {
        Some(v) => quote!(::cluster::__private::Some(#v)),
        None => quote!(::cluster::__private::None),
    }
}
