//! A forgiving parser for `key = value, key(...), key` option lists.
//!
//! It accepts any value shape so that a wrong value becomes a precise
//! "`mode` expects a string" error on that value while the other options
//! are still checked; only broken syntax (`mode = = x`) stops it.

use proc_macro2::{Span, TokenStream, TokenTree};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{bracketed, parenthesized, Ident, Lit, LitStr, Token};

/// An option's name: an identifier, or a string for names that are not
/// identifiers (`"postgres-wire"(port = 5432)`).
#[derive(Clone)]
pub struct Key {
    pub name: String,
    pub span: Span,
    /// Whether it was written as a string.
    pub quoted: bool,
}

/// An option's value.
pub enum Value {
    /// `key`
    Flag,
    /// `key = "lit"` (or any literal)
    Lit(Lit),
    /// `key = ["a", "b"]`
    Array(Vec<Lit>, Span),
    /// `key(...)`
    List(TokenStream, Span),
    /// `key = <anything else>`
    Other(TokenStream),
}

/// One option.
pub struct Opt {
    pub key: Key,
    pub value: Value,
    /// From the key to the end of the value, for errors about the option.
    pub tokens: TokenStream,
}

impl Parse for Key {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.peek(LitStr) {
            let lit: LitStr = input.parse()?;
            return Ok(Key {
                name: lit.value(),
                span: lit.span(),
                quoted: true,
            });
        }
        let ident = input.call(<Ident as syn::ext::IdentExt>::parse_any)?;
        Ok(Key {
            name: ident.to_string(),
            span: ident.span(),
            quoted: false,
        })
    }
}

impl Parse for Opt {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut tokens = TokenStream::new();
        let fork = input.fork();
        let key: Key = input.parse()?;
        let value = if input.peek(Token![=]) {
            input.parse::<Token![=]>()?;
            if input.peek(syn::token::Bracket) {
                let content;
                let bracket = bracketed!(content in input);
                let lits = Punctuated::<Lit, Token![,]>::parse_terminated(&content)?;
                Value::Array(lits.into_iter().collect(), bracket.span.join())
            } else if input.peek(Lit) && (input.peek2(Token![,]) || peek_end(input)) {
                Value::Lit(input.parse()?)
            } else {
                let mut other = TokenStream::new();
                while !input.is_empty() && !input.peek(Token![,]) {
                    other.extend([input.parse::<TokenTree>()?]);
                }
                if other.is_empty() {
                    return Err(input.error(format!("expected a value after `{} =`", key.name)));
                }
                Value::Other(other)
            }
        } else if input.peek(syn::token::Paren) {
            let content;
            let paren = parenthesized!(content in input);
            Value::List(content.parse()?, paren.span.join())
        } else {
            Value::Flag
        };
        // Everything consumed since `fork`, for errors spanning the option.
        while fork.cursor() != input.cursor() {
            match fork.parse::<TokenTree>() {
                Ok(tt) => tokens.extend([tt]),
                Err(_) => break,
            }
        }
        Ok(Opt { key, value, tokens })
    }
}

fn peek_end(input: ParseStream<'_>) -> bool {
    let fork = input.fork();
    fork.parse::<Lit>().is_ok() && fork.is_empty()
}

/// Parses a comma-separated option list.
pub fn parse_list(tokens: TokenStream) -> syn::Result<Vec<Opt>> {
    let opts = syn::parse::Parser::parse2(Punctuated::<Opt, Token![,]>::parse_terminated, tokens)?;
    Ok(opts.into_iter().collect())
}

impl Value {
    /// What was written, for "expects ..., found ..." messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Value::Flag => "nothing",
            Value::Lit(Lit::Str(_)) => "a string",
            Value::Lit(Lit::Int(_)) => "a number",
            Value::Lit(Lit::Bool(_)) => "a boolean",
            Value::Lit(_) => "a literal",
            Value::Array(..) => "a list",
            Value::List(..) => "a parenthesized list",
            Value::Other(_) => "an expression",
        }
    }

    /// An error pointing at the value (or at `key` for a flag).
    pub fn error(&self, key: &Key, message: impl std::fmt::Display) -> syn::Error {
        match self {
            Value::Flag => syn::Error::new(key.span, message),
            Value::Lit(l) => syn::Error::new(l.span(), message),
            Value::Array(_, span) | Value::List(_, span) => syn::Error::new(*span, message),
            Value::Other(t) => syn::Error::new_spanned(t, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    #[test]
    fn shapes() {
        let opts = parse_list(quote!(
            mode = "ring(8)",
            flag,
            services(a(port = 1)),
            tags = ["x", "y"],
            n = 3,
            e = a + b,
            "quoted"(x = 1)
        ))
        .expect("parse");
        let kinds: Vec<(String, &str)> = opts
            .iter()
            .map(|o| (o.key.name.clone(), o.value.describe()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("mode".into(), "a string"),
                ("flag".into(), "nothing"),
                ("services".into(), "a parenthesized list"),
                ("tags".into(), "a list"),
                ("n".into(), "a number"),
                ("e".into(), "an expression"),
                ("quoted".into(), "a parenthesized list"),
            ]
        );
        assert!(opts[6].key.quoted);
        assert_eq!(
            opts[0].tokens.to_string(),
            quote!(mode = "ring(8)").to_string()
        );
    }

    #[test]
    fn broken_syntax() {
        assert!(parse_list(quote!(mode = )).is_err());
        assert!(parse_list(quote!(mode "x")).is_err());
    }
}
