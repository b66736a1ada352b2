//! Reads the hooks of an `#[cluster::app] impl` block and checks their
//! signatures. Our attributes are removed from the item as they are read.

use std::collections::HashMap;

use proc_macro2::Span;
use quote::ToTokens;
use syn::spanned::Spanned;
use syn::{Attribute, FnArg, ImplItem, ImplItemFn, ItemImpl, ReturnType, Type};

use crate::errors::Errors;
use crate::hooks::{self, HookDef, HANDLE};

/// The hooks of one impl block.
pub struct ImplModel {
    pub self_ty: Type,
    pub hooks: Vec<HookFn>,
    pub handlers: Vec<HandlerFn>,
}

/// One `#[handle]` method.
pub struct HandlerFn {
    pub method: syn::Ident,
    /// The wire name (`name = "..."`, else the method's name).
    pub wire: String,
    /// `key = EXPR`, with the span of `key`.
    pub key: Option<(Span, syn::Expr)>,
    pub async_span: Span,
    /// The context parameter's type span.
    pub ctx_span: Span,
    /// The request parameter: its name (for the client method and the key
    /// expression) and type.
    pub request: Option<(syn::Ident, Type)>,
    /// The declared return type.
    pub ret: Type,
    pub cfgs: Vec<Attribute>,
    /// The method's doc comments, repeated on the client method.
    pub docs: Vec<Attribute>,
}

/// Client method names that would shadow the client's own methods.
const RESERVED_CLIENT_METHODS: &[&str] = &[
    "app_ref",
    "from_app",
    "on_platform",
    "with_deadline",
    "clone",
    "clone_from",
    "fmt",
];

/// One hook method.
pub struct HookFn {
    pub def: &'static HookDef,
    /// The attribute's name, where mode errors are reported.
    pub attr_span: Span,
    pub method: syn::Ident,
    /// The `async` keyword, where a `!Send` future is reported.
    pub async_span: Span,
    /// The parameter types after `&self`, where type mismatches are reported.
    pub arg_spans: Vec<Span>,
    /// The return type, where a wrong return type is reported.
    pub ret_span: Span,
    /// `#[cfg(...)]` attributes of the method, repeated on its registration.
    pub cfgs: Vec<Attribute>,
}

/// Reads the impl block. Returns `None` when it is not an impl block an app
/// can have (the errors say why).
pub fn parse(item: &mut ItemImpl, errors: &mut Errors) -> Option<ImplModel> {
    let mut usable = true;
    if let Some((_, path, _)) = &item.trait_ {
        errors.spanned(
            path,
            "#[cluster::app] goes on the app's inherent impl block (`impl App { ... }`), not on a trait impl",
        );
        usable = false;
    }
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        errors.spanned(
            &item.generics,
            "a cluster app cannot be generic: its impl block takes no generic parameters",
        );
        usable = false;
    }
    match &*item.self_ty {
        Type::Path(p) if p.qself.is_none() => {
            let generic = p.path.segments.iter().any(|s| !s.arguments.is_empty());
            if generic && item.generics.params.is_empty() {
                errors.spanned(
                    &item.self_ty,
                    "a cluster app cannot be generic: name the app struct without type arguments",
                );
                usable = false;
            }
        }
        other => {
            errors.spanned(
                other,
                "#[cluster::app] goes on `impl App { ... }` where `App` is the app struct",
            );
            usable = false;
        }
    }

    let mut hooks = Vec::new();
    let mut handlers: Vec<HandlerFn> = Vec::new();
    let mut seen: HashMap<(String, String), syn::Ident> = HashMap::new();
    let mut wires: HashMap<(String, String), syn::Ident> = HashMap::new();
    for impl_item in &mut item.items {
        let method = match impl_item {
            ImplItem::Fn(f) => f,
            other => {
                strip_misplaced(other, errors);
                continue;
            }
        };
        let Some((name, attr_span, attr)) = take_attribute(method, errors) else {
            continue;
        };
        let cfgs: Vec<Attribute> = method
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("cfg"))
            .cloned()
            .collect();
        let cfg_key = cfgs
            .iter()
            .map(|a| a.to_token_stream().to_string())
            .collect::<Vec<_>>()
            .join(" ");
        if name == HANDLE {
            if let Some(handler) = check_handler(&attr, method, cfgs, errors) {
                let ident = handler.method.to_string();
                if RESERVED_CLIENT_METHODS.contains(&ident.as_str()) {
                    errors.at(
                        handler.method.span(),
                        format!(
                            "a handler cannot be named `{ident}`: the generated client has its own `{ident}` (reserved: {}); rename the method and keep the wire name with #[handle(name = \"{ident}\")]",
                            RESERVED_CLIENT_METHODS.join(", ")
                        ),
                    );
                    continue;
                }
                if let Some(first) = wires.get(&(handler.wire.clone(), cfg_key.clone())) {
                    errors.at(
                        attr_span,
                        format!(
                            "duplicate handler name `{}`: `{first}` already handles it",
                            handler.wire
                        ),
                    );
                    continue;
                }
                wires.insert((handler.wire.clone(), cfg_key), handler.method.clone());
                handlers.push(handler);
            }
            continue;
        }
        let Some(def) = hooks::hook(&name) else {
            continue;
        };
        if let Some(first) = seen.get(&(name.clone(), cfg_key.clone())) {
            errors.at(
                attr_span,
                format!(
                    "duplicate #[{name}]: `{first}` already is this app's {name} hook; an app has at most one of each hook"
                ),
            );
            continue;
        }
        seen.insert((name, cfg_key), method.sig.ident.clone());
        if let Some(hook) = check_hook(def, attr_span, method, cfgs, errors) {
            hooks.push(hook);
        }
    }
    usable.then(|| ImplModel {
        self_ty: (*item.self_ty).clone(),
        hooks,
        handlers,
    })
}

/// Removes our attribute from a method and returns its name, or `None` if
/// the method has none. More than one, or arguments on a hook attribute,
/// are errors.
fn take_attribute(
    method: &mut ImplItemFn,
    errors: &mut Errors,
) -> Option<(String, Span, Attribute)> {
    let mut found: Option<(String, Span, Attribute)> = None;
    let mut kept = Vec::with_capacity(method.attrs.len());
    for attr in std::mem::take(&mut method.attrs) {
        let Some(name) = our_attribute(&attr) else {
            kept.push(attr);
            continue;
        };
        let span = attr.path().span();
        if let Some((first, _, _)) = &found {
            errors.at(
                span,
                format!(
                    "`{}` already has #[{first}]; a method takes one cluster attribute",
                    method.sig.ident
                ),
            );
            continue;
        }
        if name != HANDLE {
            if let syn::Meta::List(list) = &attr.meta {
                errors.spanned(&list.tokens, format!("#[{name}] takes no arguments"));
            } else if let syn::Meta::NameValue(nv) = &attr.meta {
                errors.spanned(&nv.value, format!("#[{name}] takes no arguments"));
            }
        }
        found = Some((name, span, attr));
    }
    method.attrs = kept;
    found
}

fn our_attribute(attr: &Attribute) -> Option<String> {
    let ident = attr.path().get_ident()?;
    let name = ident.to_string();
    hooks::is_method_attribute(&name).then_some(name)
}

/// Our attributes on something other than a method (a const, a type, a
/// macro call) are errors; they are removed so nothing else complains.
fn strip_misplaced(item: &mut ImplItem, errors: &mut Errors) {
    let attrs = match item {
        ImplItem::Const(c) => &mut c.attrs,
        ImplItem::Type(t) => &mut t.attrs,
        ImplItem::Macro(m) => &mut m.attrs,
        _ => return,
    };
    attrs.retain(|attr| match our_attribute(attr) {
        Some(name) => {
            errors.spanned(attr, format!("#[{name}] goes on an `async fn` method"));
            false
        }
        None => true,
    });
}

/// The checks hooks and handlers share: an `async fn`, not const, unsafe,
/// extern or generic, taking `&self` first. `subject` names the method kind
/// in messages ("a #[on_active] hook", "a handler"). Returns the span where
/// a non-`Send` future is reported (the `async` token, or `fn` without one).
fn check_shape(
    sig: &syn::Signature,
    subject: &str,
    expected: &str,
    errors: &mut Errors,
    ok: &mut bool,
) -> Span {
    let mut fail = |errors: &mut Errors, span: Span, msg: String| {
        errors.at(span, msg);
        *ok = false;
    };
    if let Some(c) = &sig.constness {
        fail(errors, c.span, format!("{subject} cannot be `const`"));
    }
    if let Some(u) = &sig.unsafety {
        fail(errors, u.span, format!("{subject} cannot be `unsafe`"));
    }
    if let Some(abi) = &sig.abi {
        fail(
            errors,
            abi.extern_token.span,
            format!("{subject} cannot be `extern`"),
        );
    }
    let async_span = match &sig.asyncness {
        Some(a) => a.span,
        None => {
            fail(
                errors,
                sig.fn_token.span,
                format!("{subject} must be an `async fn`: {expected}"),
            );
            sig.fn_token.span
        }
    };
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        fail(
            errors,
            sig.generics.span(),
            format!("{subject} cannot have generic parameters: {expected}"),
        );
    }
    match sig.inputs.first() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() && r.colon_token.is_none() => {}
        Some(FnArg::Receiver(r)) if r.mutability.is_some() && r.reference.is_some() => fail(
            errors,
            r.span(),
            format!(
                "{subject} takes `&self`, not `&mut self`: the app is shared by all its hooks and handlers, so keep mutable state in atomics or locks"
            ),
        ),
        Some(FnArg::Receiver(r)) => fail(errors, r.span(), format!("{subject} takes `&self`: {expected}")),
        Some(FnArg::Typed(t)) => fail(errors, t.span(), format!("{subject} takes `&self` first: {expected}")),
        None => fail(errors, sig.paren_token.span.join(), format!("{subject} takes `&self` first: {expected}")),
    }
    async_span
}

/// Checks a hook's signature against its definition.
fn check_hook(
    def: &'static HookDef,
    attr_span: Span,
    method: &ImplItemFn,
    cfgs: Vec<Attribute>,
    errors: &mut Errors,
) -> Option<HookFn> {
    let sig = &method.sig;
    let name = def.name;
    let expected = def.signature();
    let mut ok = true;
    let async_span = check_shape(
        sig,
        &format!("a #[{name}] hook"),
        &expected,
        errors,
        &mut ok,
    );
    let mut fail = |errors: &mut Errors, span: Span, msg: String| {
        errors.at(span, msg);
        ok = false;
    };
    let inputs = sig.inputs.iter();
    let rest: Vec<&syn::PatType> = inputs
        .filter_map(|a| match a {
            FnArg::Typed(t) => Some(t),
            FnArg::Receiver(_) => None,
        })
        .collect();
    let wanted = 1 + def.args.len();
    if rest.len() > wanted {
        fail(
            errors,
            rest[wanted].span(),
            format!(
                "too many arguments: a #[{name}] hook takes {} after `&self`: {expected}",
                plural(wanted)
            ),
        );
    } else if rest.len() < wanted {
        fail(
            errors,
            sig.paren_token.span.join(),
            format!(
                "missing arguments: a #[{name}] hook takes {} after `&self`: {expected}",
                plural(wanted)
            ),
        );
    }
    if let Some(ctx) = rest.first() {
        if !matches!(&*ctx.ty, Type::Reference(r) if r.mutability.is_none()) {
            fail(
                errors,
                ctx.ty.span(),
                format!("the context is borrowed: `ctx: &AppContext` ({expected})"),
            );
        }
    }
    let ret_span = match &sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => {
            fail(
                errors,
                sig.paren_token.span.close(),
                format!("a #[{name}] hook returns `cluster::Result<()>`: {expected}"),
            );
            sig.ident.span()
        }
    };
    ok.then(|| HookFn {
        def,
        attr_span,
        method: sig.ident.clone(),
        async_span,
        arg_spans: rest.iter().map(|t| t.ty.span()).collect(),
        ret_span,
        cfgs,
    })
}

fn plural(n: usize) -> String {
    match n {
        1 => "one argument".into(),
        2 => "two arguments".into(),
        n => format!("{n} arguments"),
    }
}

/// Checks a `#[handle]` method: `async fn name(&self, ctx: &AppContext[,
/// req: Req]) -> cluster::Result<Resp>`, and its options.
fn check_handler(
    attr: &Attribute,
    method: &ImplItemFn,
    cfgs: Vec<Attribute>,
    errors: &mut Errors,
) -> Option<HandlerFn> {
    const EXPECTED: &str =
        "async fn name(&self, ctx: &AppContext, req: Req) -> cluster::Result<Resp> (the request is optional)";
    let mut ok = true;
    let mut wire = None;
    let mut key = None;
    if let syn::Meta::List(list) = &attr.meta {
        let parsed = list.parse_args_with(
            syn::punctuated::Punctuated::<syn::MetaNameValue, syn::Token![,]>::parse_terminated,
        );
        match parsed {
            Ok(options) => {
                for option in options {
                    let name = option
                        .path
                        .get_ident()
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    match name.as_str() {
                        "name" if wire.is_none() => match &option.value {
                            syn::Expr::Lit(syn::ExprLit {
                                lit: syn::Lit::Str(s),
                                ..
                            }) => match cluster_spec::naming::validate_method(&s.value()) {
                                Ok(()) => wire = Some(s.value()),
                                Err(e) => {
                                    errors.at(s.span(), e);
                                    ok = false;
                                }
                            },
                            other => {
                                errors.spanned(
                                    other,
                                    "`name` expects a string: #[handle(name = \"incr\")]",
                                );
                                ok = false;
                            }
                        },
                        "key" if key.is_none() => {
                            key = Some((option.path.span(), option.value.clone()))
                        }
                        "name" | "key" => {
                            errors.spanned(&option.path, format!("duplicate option `{name}`"));
                            ok = false;
                        }
                        _ => {
                            errors.spanned(
                                &option.path,
                                format!(
                                    "unknown #[handle] option `{}`; allowed: key = EXPR, name = \"...\"{}",
                                    option.path.to_token_stream(),
                                    crate::suggest::did_you_mean(&name, &["key", "name"])
                                ),
                            );
                            ok = false;
                        }
                    }
                }
            }
            Err(e) => {
                errors.push(e);
                ok = false;
            }
        }
    } else if let syn::Meta::NameValue(nv) = &attr.meta {
        errors.spanned(
            nv,
            "write #[handle], #[handle(key = EXPR)] or #[handle(name = \"...\")]",
        );
        ok = false;
    }

    let sig = &method.sig;
    let async_span = check_shape(sig, "a handler", EXPECTED, errors, &mut ok);
    let mut fail = |errors: &mut Errors, span: Span, msg: String| {
        errors.at(span, msg);
        ok = false;
    };
    let rest: Vec<&syn::PatType> = sig
        .inputs
        .iter()
        .filter_map(|a| match a {
            FnArg::Typed(t) => Some(t),
            FnArg::Receiver(_) => None,
        })
        .collect();
    if rest.len() > 2 {
        fail(
            errors,
            rest[2].span(),
            format!("too many arguments: a handler takes one request after the context; put several values in one struct: {EXPECTED}"),
        );
    }
    let ctx_span = match rest.first() {
        Some(ctx) => {
            if !matches!(&*ctx.ty, Type::Reference(r) if r.mutability.is_none()) {
                fail(
                    errors,
                    ctx.ty.span(),
                    format!("the context is borrowed: `ctx: &AppContext` ({EXPECTED})"),
                );
            }
            ctx.ty.span()
        }
        None => {
            fail(
                errors,
                sig.paren_token.span.join(),
                format!("a handler takes the context after `&self`: {EXPECTED}"),
            );
            sig.ident.span()
        }
    };
    let request = rest.get(1).map(|req| {
        let name = match &*req.pat {
            syn::Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => p.ident.clone(),
            other => syn::Ident::new("request", other.span()),
        };
        (name, (*req.ty).clone())
    });
    if let (Some((key_span, _)), None) = (&key, &request) {
        fail(
            errors,
            *key_span,
            "`key = ...` computes the routing key from the request, and this handler takes none"
                .into(),
        );
    }
    let ret = match &sig.output {
        ReturnType::Type(_, ty) => (**ty).clone(),
        ReturnType::Default => {
            fail(
                errors,
                sig.paren_token.span.close(),
                format!("a handler returns `cluster::Result<Resp>`: {EXPECTED}"),
            );
            syn::parse_quote!(())
        }
    };
    let docs = method
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .cloned()
        .collect();
    ok.then(|| HandlerFn {
        wire: wire.unwrap_or_else(|| sig.ident.to_string().trim_start_matches("r#").to_owned()),
        method: sig.ident.clone(),
        key,
        async_span,
        ctx_span,
        request,
        ret,
        cfgs,
        docs,
    })
}
