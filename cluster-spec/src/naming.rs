//! The rules for platform, app and node names.
//!
//! Names are `[a-z0-9-]+` because they become NATS subject tokens and parts
//! of bucket names (where `_` separates parts). App names that would collide
//! with platform-wide resources are reserved.

use std::fmt;

/// App names that would collide with platform-wide resources.
pub const RESERVED_APP_NAMES: &[&str] = &[
    "nodes",
    "platform",
    "placement",
    "services",
    "events",
    "audit",
];

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    /// The name is empty.
    Empty {
        /// What was being named (`platform`, `app`, `node`).
        kind: &'static str,
    },
    /// The name contains a character outside the allowed set.
    Invalid {
        /// What was being named.
        kind: &'static str,
        /// The refused name.
        name: String,
    },
    /// The app name collides with a platform resource.
    Reserved {
        /// The refused name.
        name: String,
    },
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NameError::Empty { kind } => write!(f, "{kind} name must not be empty"),
            NameError::Invalid { kind, name } => write!(
                f,
                "{kind} name `{name}` is invalid: use only lowercase letters, digits and `-` ([a-z0-9-]+)"
            ),
            NameError::Reserved { name } => write!(
                f,
                "app name `{name}` is reserved (reserved: {})",
                RESERVED_APP_NAMES.join(", ")
            ),
        }
    }
}

impl std::error::Error for NameError {}

/// Whether `name` is a non-empty `[a-z0-9-]+` token.
pub fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn check(kind: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if !is_token(name) {
        return Err(NameError::Invalid {
            kind,
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Validates a platform name.
pub fn validate_platform(name: &str) -> Result<(), NameError> {
    check("platform", name)
}

/// Validates an app name (also refusing reserved names).
///
/// ```
/// use cluster_spec::naming::validate_app;
/// assert!(validate_app("counter").is_ok());
/// assert!(validate_app("Counter").is_err());
/// assert!(validate_app("nodes").is_err());
/// ```
pub fn validate_app(name: &str) -> Result<(), NameError> {
    check("app", name)?;
    if RESERVED_APP_NAMES.contains(&name) {
        return Err(NameError::Reserved {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// Validates a node id. Node ids become subject tokens and KV keys, so they
/// follow the same rule as app names.
pub fn validate_node(name: &str) -> Result<(), NameError> {
    check("node", name)
}

/// Checks an RPC method (handler) wire name: letters, digits, `_` and `-`
/// (it is one NATS subject token).
pub fn validate_method(name: &str) -> Result<(), String> {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(())
    } else {
        Err(format!(
            "method name `{name}` is invalid: use letters, digits, `_` and `-` only"
        ))
    }
}

/// The default wire name of an app type: its Rust name in kebab-case
/// (`Counter` → `counter`, `HttpApi` → `http-api`, `HTTPServer` →
/// `http-server`, `Cache2` → `cache2`, `my_app` → `my-app`).
pub fn kebab_case(ident: &str) -> String {
    let ident = ident.strip_prefix("r#").unwrap_or(ident);
    let chars: Vec<char> = ident.chars().collect();
    let mut out = String::with_capacity(ident.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c == '_' {
            if !out.is_empty() && !out.ends_with('-') {
                out.push('-');
            }
            continue;
        }
        if c.is_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            let boundary =
                prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_lower);
            if boundary && !out.is_empty() && !out.ends_with('-') {
                out.push('-');
            }
        }
        out.extend(c.to_lowercase());
    }
    while out.ends_with('-') {
        out.pop();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_app("my-app-2").is_ok());
        assert_eq!(validate_app(""), Err(NameError::Empty { kind: "app" }));
        assert!(validate_app("my_app")
            .expect_err("underscore")
            .to_string()
            .contains("[a-z0-9-]+"));
        assert!(validate_app("audit")
            .expect_err("reserved")
            .to_string()
            .contains("reserved"));
        assert!(validate_node("node-1").is_ok());
        assert!(validate_node("N1").is_err());
        assert!(validate_platform("prod").is_ok());
        assert!(validate_platform("pro.d").is_err());
    }

    #[test]
    fn methods() {
        assert!(validate_method("incr").is_ok());
        assert!(validate_method("get-all_2").is_ok());
        assert!(validate_method("").is_err());
        assert!(validate_method("a.b").is_err());
        assert!(validate_method("a b").is_err());
    }

    #[test]
    fn kebab() {
        for (rust, wire) in [
            ("Counter", "counter"),
            ("MyApp", "my-app"),
            ("HttpApi", "http-api"),
            ("HTTPServer", "http-server"),
            ("Cache2", "cache2"),
            ("Cache2Go", "cache2-go"),
            ("my_app", "my-app"),
            ("r#Type", "type"),
            ("A", "a"),
            ("ABC", "abc"),
        ] {
            assert_eq!(kebab_case(rust), wire, "{rust}");
        }
    }
}
