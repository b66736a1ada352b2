//! Parses and validates the options of `#[cluster::app(...)]` on a struct.
//!
//! Every option is checked with the runtime's own grammar (`cluster-spec`);
//! every problem is recorded, so one expansion reports them all.

use std::collections::HashMap;
use std::time::Duration;

use cluster_spec::fit::{option_fits, OPTIONS};
use cluster_spec::ops::{self, Backend, Vip};
use cluster_spec::placement::Placement;
use cluster_spec::{duration, lease, naming, Mode};
use proc_macro2::{Ident, Span, TokenStream};
use syn::Lit;

use super::model::{AppModel, ServiceModel};
use crate::errors::Errors;
use crate::opts::{self, Key, Opt, Value};
use crate::suggest::did_you_mean;

/// Parses the attribute's arguments. Returns `None` when the options could
/// not be read at all; otherwise a model (check `errors` before using it).
pub fn parse(args: TokenStream, ident: &Ident, errors: &mut Errors) -> Option<AppModel> {
    let opts = match opts::parse_list(args) {
        Ok(opts) => opts,
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    let mut seen: HashMap<String, Span> = HashMap::new();
    let mut mode: Option<(Mode, &Opt)> = None;
    let mut mode_ok = true;
    let mut name: Option<String> = None;
    let mut placement = None;
    let mut lease_ttl: Option<(Duration, &Opt)> = None;
    let mut hook_timeout = None;
    let mut sqlite: Option<(String, &Opt)> = None;
    let mut vip: Option<(String, &Opt)> = None;
    let mut backend = None;
    let mut services: Vec<(ServiceModel, Option<TokenStream>)> = Vec::new();

    for opt in &opts {
        let key = &opt.key;
        if key.quoted {
            errors.at(
                key.span,
                format!("option names are not strings: write `{} = ...`", key.name),
            );
            continue;
        }
        if !OPTIONS.contains(&key.name.as_str()) {
            errors.at(
                key.span,
                format!(
                    "unknown option `{}`; allowed: {}{}",
                    key.name,
                    OPTIONS.join(", "),
                    did_you_mean(&key.name, OPTIONS)
                ),
            );
            continue;
        }
        if seen.insert(key.name.clone(), key.span).is_some() {
            errors.at(
                key.span,
                format!("duplicate option `{}`: set it once", key.name),
            );
            continue;
        }
        match key.name.as_str() {
            "mode" => match string(opt, "\"singleton\"", errors).map(|s| Mode::parse(&s)) {
                Some(Ok(m)) => mode = Some((m, opt)),
                Some(Err(e)) => {
                    errors.push(opt.value.error(key, e));
                    mode_ok = false;
                }
                None => mode_ok = false,
            },
            "placement" => {
                if let Some(s) = string(opt, "\"label=zone=a\"", errors) {
                    match Placement::parse(&s) {
                        Ok(_) => placement = Some(s),
                        Err(e) => errors.push(opt.value.error(key, e)),
                    }
                }
            }
            "name" => {
                if let Some(s) = string(opt, "\"my-app\"", errors) {
                    match naming::validate_app(&s) {
                        Ok(()) => name = Some(s),
                        Err(e) => errors.push(opt.value.error(key, e)),
                    }
                }
            }
            "lease_ttl" => {
                if let Some(d) = duration_opt(opt, "\"3s\"", errors) {
                    match lease::check_ttl(d) {
                        Ok(()) => lease_ttl = Some((d, opt)),
                        Err(e) => errors.push(opt.value.error(key, e)),
                    }
                }
            }
            "hook_timeout" => {
                if let Some(d) = duration_opt(opt, "\"30s\"", errors) {
                    if d.is_zero() {
                        errors.push(opt.value.error(key, "hook_timeout must be > 0"));
                    } else {
                        hook_timeout = Some(d);
                    }
                }
            }
            "sqlite" => {
                if let Some(s) = string(opt, "\"/var/lib/myapp/data.db\"", errors) {
                    match ops::check_sqlite_path(&s) {
                        Ok(()) => sqlite = Some((s, opt)),
                        Err(e) => errors.push(opt.value.error(key, e)),
                    }
                }
            }
            "vip" => {
                if let Some(s) = string(opt, "\"192.168.1.100/24 dev eth0\"", errors) {
                    match Vip::parse(&s) {
                        Ok(_) => vip = Some((s, opt)),
                        Err(e) => errors.push(opt.value.error(key, e)),
                    }
                }
            }
            "backend" => {
                if let Some(s) = string(opt, "\"systemd:myapp\"", errors) {
                    match Backend::parse(&s) {
                        Ok(_) => backend = Some(s),
                        Err(e) => errors.push(opt.value.error(key, e)),
                    }
                }
            }
            "services" => match &opt.value {
                Value::List(tokens, _) => services = parse_services(tokens.clone(), errors),
                other => errors.push(other.error(
                    key,
                    format!(
                        "`services` expects a list, e.g. services(http(port = 8080)), found {}",
                        other.describe()
                    ),
                )),
            },
            _ => unreachable!("every name in OPTIONS is handled"),
        }
    }

    // Cross-option rules, only when the mode itself is known to be right
    // (a bad mode is one error, not one per option that depends on it).
    let mode_value = mode.as_ref().map(|(m, _)| *m).unwrap_or(Mode::Singleton);
    if mode_ok {
        let fits = |option: &str, opt: &Opt, errors: &mut Errors| {
            if let Err(e) = option_fits(option, mode_value) {
                errors.spanned(&opt.tokens, e);
            }
        };
        if let Some((_, opt)) = &sqlite {
            fits("sqlite", opt, errors);
        }
        if let Some((_, opt)) = &vip {
            fits("vip", opt, errors);
        }
        if let Some((_, opt)) = &lease_ttl {
            fits("lease_ttl", opt, errors);
        }
        for (_, weight) in &services {
            if let Some(tokens) = weight {
                if let Err(e) = option_fits("weight", mode_value) {
                    errors.spanned(tokens, e);
                }
            }
        }
    }

    let name = match name {
        Some(n) => n,
        None => {
            let derived = naming::kebab_case(&ident.to_string());
            if let Err(e) = naming::validate_app(&derived) {
                if !seen.contains_key("name") {
                    errors.at(
                        ident.span(),
                        format!(
                            "the app name derived from `{ident}` is not usable: {e}; set one with #[cluster::app(name = \"...\")]"
                        ),
                    );
                }
            }
            derived
        }
    };

    Some(AppModel {
        ident: ident.clone(),
        name,
        mode: mode_value,
        placement,
        lease_ttl: lease_ttl.map(|(d, _)| d),
        hook_timeout,
        sqlite: sqlite.map(|(s, _)| s),
        vip: vip.map(|(s, _)| s),
        backend,
        services: services.into_iter().map(|(s, _)| s).collect(),
    })
}

/// The option's string value, or an error saying what was expected.
fn string(opt: &Opt, example: &str, errors: &mut Errors) -> Option<String> {
    match &opt.value {
        Value::Lit(Lit::Str(s)) => Some(s.value()),
        other => {
            errors.push(other.error(
                &opt.key,
                format!(
                    "`{}` expects a string, e.g. {} = {example}, found {}",
                    opt.key.name,
                    opt.key.name,
                    other.describe()
                ),
            ));
            None
        }
    }
}

fn duration_opt(opt: &Opt, example: &str, errors: &mut Errors) -> Option<Duration> {
    let s = string(opt, example, errors)?;
    match duration::parse(&s) {
        Ok(d) => Some(d),
        Err(e) => {
            errors.push(opt.value.error(&opt.key, e));
            None
        }
    }
}

const SERVICE_OPTIONS: &[&str] = &[
    "port", "protocol", "path", "tags", "metadata", "internal", "weight",
];

/// Parses `services(NAME(port = N, ...), "other-name"(...))`. Returns the
/// valid entries, each with its `weight` option (for the mode check).
fn parse_services(
    tokens: TokenStream,
    errors: &mut Errors,
) -> Vec<(ServiceModel, Option<TokenStream>)> {
    let entries = match opts::parse_list(tokens) {
        Ok(e) => e,
        Err(e) => {
            errors.push(e);
            return Vec::new();
        }
    };
    let mut names: HashMap<String, Span> = HashMap::new();
    let mut out = Vec::new();
    for entry in entries {
        let name = entry.key.name.clone();
        if let Err(e) = ops::check_service_name(&name) {
            let hint = if entry.key.quoted {
                String::new()
            } else {
                format!(
                    "; a name that is not an identifier is written as a string: \"{}\"(port = ...)",
                    name.replace('_', "-").to_lowercase()
                )
            };
            errors.at(entry.key.span, format!("{e}{hint}"));
            continue;
        }
        if names.insert(name.clone(), entry.key.span).is_some() {
            errors.at(entry.key.span, format!("duplicate service `{name}`"));
            continue;
        }
        let Value::List(inner, _) = &entry.value else {
            errors.push(entry.value.error(
                &entry.key,
                format!(
                    "service `{name}` needs its settings: {name}(port = 8080, protocol = \"http\")"
                ),
            ));
            continue;
        };
        if let Some(service) = parse_service(&name, &entry.key, inner.clone(), errors) {
            out.push(service);
        }
    }
    out
}

fn parse_service(
    name: &str,
    key: &Key,
    tokens: TokenStream,
    errors: &mut Errors,
) -> Option<(ServiceModel, Option<TokenStream>)> {
    let opts = match opts::parse_list(tokens) {
        Ok(o) => o,
        Err(e) => {
            errors.push(e);
            return None;
        }
    };
    let mut ok = true;
    let mut seen: HashMap<String, Span> = HashMap::new();
    let mut port = None;
    let mut protocol: Option<(String, Span)> = None;
    let mut path: Option<(String, &Opt)> = None;
    let mut tags = Vec::new();
    let mut metadata = Vec::new();
    let mut internal = false;
    let mut weight = None;
    for opt in &opts {
        let k = &opt.key;
        if !SERVICE_OPTIONS.contains(&k.name.as_str()) || k.quoted {
            errors.at(
                k.span,
                format!(
                    "unknown service option `{}`; allowed: {}{}",
                    k.name,
                    SERVICE_OPTIONS.join(", "),
                    did_you_mean(&k.name, SERVICE_OPTIONS)
                ),
            );
            ok = false;
            continue;
        }
        if seen.insert(k.name.clone(), k.span).is_some() {
            errors.at(k.span, format!("duplicate service option `{}`", k.name));
            ok = false;
            continue;
        }
        let mut fail = |e: syn::Error| {
            errors.push(e);
            ok = false;
        };
        match (k.name.as_str(), &opt.value) {
            ("port", Value::Lit(Lit::Int(i))) => {
                match i
                    .base10_parse::<u64>()
                    .map_err(|e| e.to_string())
                    .and_then(ops::check_port)
                {
                    Ok(p) => port = Some(p),
                    Err(e) => fail(syn::Error::new(i.span(), e)),
                }
            }
            ("protocol", Value::Lit(Lit::Str(s))) => match ops::check_protocol(&s.value()) {
                Ok(()) => protocol = Some((s.value(), s.span())),
                Err(e) => fail(syn::Error::new(s.span(), e)),
            },
            ("path", Value::Lit(Lit::Str(s))) => path = Some((s.value(), opt)),
            ("tags", Value::Array(lits, _)) => {
                for lit in lits {
                    match lit {
                        Lit::Str(s) => match ops::check_tag("tag", &s.value()) {
                            Ok(()) => tags.push(s.value()),
                            Err(e) => fail(syn::Error::new(s.span(), e)),
                        },
                        other => fail(syn::Error::new(other.span(), "tags are strings")),
                    }
                }
            }
            ("metadata", Value::List(inner, _)) => match opts::parse_list(inner.clone()) {
                Ok(pairs) => {
                    for pair in pairs {
                        match &pair.value {
                            Value::Lit(Lit::Str(v)) => {
                                match ops::check_tag("metadata key", &pair.key.name) {
                                    Ok(()) => metadata.push((pair.key.name.clone(), v.value())),
                                    Err(e) => fail(syn::Error::new(pair.key.span, e)),
                                }
                            }
                            other => fail(other.error(
                                &pair.key,
                                format!("metadata values are strings: {} = \"...\"", pair.key.name),
                            )),
                        }
                    }
                }
                Err(e) => fail(e),
            },
            ("internal", Value::Lit(Lit::Bool(b))) => internal = b.value,
            ("internal", Value::Flag) => internal = true,
            ("weight", Value::Lit(Lit::Int(i))) => {
                match i
                    .base10_parse::<u64>()
                    .map_err(|e| e.to_string())
                    .and_then(ops::check_weight)
                {
                    Ok(w) => weight = Some((w, opt.tokens.clone())),
                    Err(e) => fail(syn::Error::new(i.span(), e)),
                }
            }
            (option, value) => {
                let expected = match option {
                    "port" => "a number: port = 8080",
                    "protocol" => "a string: protocol = \"http\"",
                    "path" => "a string: path = \"/health\"",
                    "tags" => "a list of strings: tags = [\"public\"]",
                    "metadata" => "a list: metadata(version = \"1.0\", \"envoy.lb\" = \"rr\")",
                    "internal" => "a boolean: internal = true",
                    _ => "a number: weight = 10",
                };
                fail(value.error(
                    k,
                    format!("`{option}` expects {expected}, found {}", value.describe()),
                ));
            }
        }
    }
    let protocol_name = protocol.as_ref().map(|(p, _)| p.as_str()).unwrap_or("tcp");
    if let Some((p, opt)) = &path {
        if let Err(e) = ops::check_service_path(protocol_name, p) {
            errors.push(opt.value.error(&opt.key, e));
            ok = false;
        }
    }
    let Some(port) = port else {
        if ok {
            errors.at(
                key.span,
                format!("service `{name}` needs a port: {name}(port = 8080)"),
            );
        }
        return None;
    };
    let (weight, weight_tokens) = match weight {
        Some((w, t)) => (Some(w), Some(t)),
        None => (None, None),
    };
    ok.then(|| {
        (
            ServiceModel {
                name: name.to_owned(),
                port,
                protocol: protocol_name.to_owned(),
                path: path.map(|(p, _)| p),
                tags,
                metadata,
                internal,
                weight,
            },
            weight_tokens,
        )
    })
}
