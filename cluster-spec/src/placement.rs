//! Where an app may run: the placement grammar and node eligibility.
//!
//! Grammar (DESIGN §1): `placement = "term, term, ..."` with terms
//! `label=SEL`, `avoid-label=SEL`, `prefer-label=SEL[@WEIGHT]`,
//! `node=ID[|ID...]`, `prefer-node=ID[@WEIGHT]`, `with-app=APP`,
//! `away-from=APP`; `SEL` is `KEY` (label present) or `KEY=VALUE`.
//! Node labels use the same `KEY` / `KEY=VALUE` syntax.
//!
//! Hard constraints (`label`, `avoid-label`, `node`) decide eligibility;
//! soft preferences and app affinities are for the placement controller.

use std::collections::BTreeMap;
use std::fmt;

/// Node labels: key → value (`""` for a label that is only present).
pub type Labels = BTreeMap<String, String>;

/// A label selector: `KEY` or `KEY=VALUE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// Label key.
    pub key: String,
    /// Required value, if any.
    pub value: Option<String>,
}

impl Selector {
    /// Parses `KEY` or `KEY=VALUE`.
    pub fn parse(s: &str) -> Result<Selector, String> {
        let (key, value) = match s.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (s.trim(), None),
        };
        check_label_part("label key", key)?;
        if let Some(v) = value {
            check_label_part("label value", v)?;
        }
        Ok(Selector {
            key: key.to_owned(),
            value: value.map(str::to_owned),
        })
    }

    /// Whether `labels` satisfy this selector.
    pub fn matches(&self, labels: &Labels) -> bool {
        match (labels.get(&self.key), &self.value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(have), Some(want)) => have == want,
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={}", self.key, v),
            None => f.write_str(&self.key),
        }
    }
}

fn check_label_part(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
    {
        return Err(format!(
            "{what} `{s}` may contain only letters, digits, `-`, `_`, `.` and `/`"
        ));
    }
    Ok(())
}

/// Parses node labels: `zone=us-east-1a,ssd` (comma-separated selectors).
pub fn parse_labels(s: &str) -> Result<Labels, String> {
    let mut labels = Labels::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let sel = Selector::parse(part)?;
        labels.insert(sel.key, sel.value.unwrap_or_default());
    }
    Ok(labels)
}

/// One placement term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Term {
    /// Only nodes matching the selector.
    Label(Selector),
    /// Never nodes matching the selector.
    AvoidLabel(Selector),
    /// Prefer nodes matching the selector.
    PreferLabel(Selector, u32),
    /// Only these nodes.
    Node(Vec<String>),
    /// Prefer this node.
    PreferNode(String, u32),
    /// Run where another app runs.
    WithApp(String),
    /// Never where another app runs.
    AwayFrom(String),
}

/// The terms allowed in a placement string, for error messages.
pub const TERMS: &str = "label=SEL, avoid-label=SEL, prefer-label=SEL[@WEIGHT], node=ID[|ID...], prefer-node=ID[@WEIGHT], with-app=APP, away-from=APP";

/// Placement constraints of an app.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// The terms, in the order written.
    pub terms: Vec<Term>,
}

fn weighted(s: &str) -> Result<(&str, u32), String> {
    match s.rsplit_once('@') {
        None => Ok((s, 1)),
        Some((v, w)) => {
            let w: u32 = w
                .trim()
                .parse()
                .map_err(|_| format!("weight `{w}` must be a whole number between 1 and 100"))?;
            if !(1..=100).contains(&w) {
                return Err(format!("weight `{w}` must be between 1 and 100"));
            }
            Ok((v.trim(), w))
        }
    }
}

impl Placement {
    /// Parses `"term, term, ..."`. An empty string means "anywhere".
    ///
    /// ```
    /// use cluster_spec::placement::{Placement, Labels};
    /// let p = Placement::parse("label=zone=a, avoid-label=draining").unwrap();
    /// let mut labels = Labels::new();
    /// labels.insert("zone".into(), "a".into());
    /// assert!(p.allows("n1", &labels));
    /// ```
    pub fn parse(s: &str) -> Result<Placement, String> {
        let mut terms = Vec::new();
        for raw in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (name, arg) = raw.split_once('=').ok_or_else(|| {
                format!("placement term `{raw}` is not `NAME=VALUE`; allowed: {TERMS}")
            })?;
            let arg = arg.trim();
            let term = match name.trim() {
                "label" => Term::Label(Selector::parse(arg)?),
                "avoid-label" => Term::AvoidLabel(Selector::parse(arg)?),
                "prefer-label" => {
                    let (sel, w) = weighted(arg)?;
                    Term::PreferLabel(Selector::parse(sel)?, w)
                }
                "node" => {
                    let ids: Vec<String> = arg.split('|').map(|i| i.trim().to_owned()).collect();
                    for id in &ids {
                        crate::naming::validate_node(id).map_err(|e| e.to_string())?;
                    }
                    Term::Node(ids)
                }
                "prefer-node" => {
                    let (id, w) = weighted(arg)?;
                    crate::naming::validate_node(id).map_err(|e| e.to_string())?;
                    Term::PreferNode(id.to_owned(), w)
                }
                "with-app" => {
                    crate::naming::validate_app(arg).map_err(|e| e.to_string())?;
                    Term::WithApp(arg.to_owned())
                }
                "away-from" => {
                    crate::naming::validate_app(arg).map_err(|e| e.to_string())?;
                    Term::AwayFrom(arg.to_owned())
                }
                other => {
                    return Err(format!(
                        "unknown placement term `{other}`; allowed: {TERMS}"
                    ))
                }
            };
            terms.push(term);
        }
        Ok(Placement { terms })
    }

    /// The soft preferences and app affinities: terms only a placement
    /// controller can honour (a runtime without one refuses them).
    pub fn unsupported_terms(&self) -> Vec<&Term> {
        self.terms
            .iter()
            .filter(|t| {
                matches!(
                    t,
                    Term::PreferLabel(..)
                        | Term::PreferNode(..)
                        | Term::WithApp(_)
                        | Term::AwayFrom(_)
                )
            })
            .collect()
    }

    /// Whether a node with this id and labels satisfies the hard constraints.
    pub fn allows(&self, node: &str, labels: &Labels) -> bool {
        self.terms.iter().all(|t| match t {
            Term::Label(sel) => sel.matches(labels),
            Term::AvoidLabel(sel) => !sel.matches(labels),
            Term::Node(ids) => ids.iter().any(|i| i == node),
            _ => true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(s: &str) -> Labels {
        parse_labels(s).expect("labels")
    }

    #[test]
    fn parses_every_term() {
        let p = Placement::parse(
            "label=zone=a, avoid-label=old, prefer-label=ssd@5, node=n1|n2, prefer-node=n1@3, with-app=db, away-from=cache",
        )
        .expect("parse");
        assert_eq!(p.terms.len(), 7);
        assert_eq!(p.unsupported_terms().len(), 4);
    }

    #[test]
    fn eligibility() {
        let p = Placement::parse("label=zone=a, avoid-label=draining").expect("parse");
        assert!(p.allows("x", &labels("zone=a,ssd")));
        assert!(!p.allows("x", &labels("zone=b")));
        assert!(!p.allows("x", &labels("zone=a,draining")));
        let p = Placement::parse("node=n1|n2").expect("parse");
        assert!(p.allows("n2", &labels("")));
        assert!(!p.allows("n3", &labels("")));
        let p = Placement::parse("label=ssd").expect("parse");
        assert!(p.allows("x", &labels("ssd")));
        assert!(p.allows("x", &labels("ssd=yes")));
        assert!(Placement::parse("")
            .expect("empty")
            .allows("x", &labels("")));
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(Placement::parse("zone=a")
            .expect_err("unknown")
            .contains("allowed"));
        assert!(Placement::parse("label")
            .expect_err("no value")
            .contains("NAME=VALUE"));
        assert!(Placement::parse("label=")
            .expect_err("empty")
            .contains("empty"));
        assert!(Placement::parse("prefer-label=ssd@0")
            .expect_err("weight")
            .contains("weight"));
        assert!(Placement::parse("node=N1")
            .expect_err("node id")
            .contains("invalid"));
        assert!(parse_labels("zone=a b").is_err());
    }
}
