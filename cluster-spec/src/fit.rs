//! Which options and hooks fit which mode.
//!
//! "Each option that does not fit the mode is a compile error" (DESIGN §1):
//! the macros check these rules at compile time, the runtime builder at
//! start-up, from this one table.

use crate::Mode;

/// The options of `#[cluster::app(...)]` on a struct, in documentation order.
pub const OPTIONS: &[&str] = &[
    "mode",
    "placement",
    "name",
    "lease_ttl",
    "hook_timeout",
    "sqlite",
    "vip",
    "backend",
    "services",
];

/// Checks that `option` fits `mode`; the message says why not.
///
/// ```
/// use cluster_spec::{fit::option_fits, Mode};
/// assert!(option_fits("vip", Mode::Singleton).is_ok());
/// assert!(option_fits("vip", Mode::Spread).is_err());
/// ```
pub fn option_fits(option: &str, mode: Mode) -> Result<(), String> {
    let why = match option {
        "sqlite" if mode != Mode::Singleton => {
            "a replicated database has one writer, the active instance"
        }
        "vip" if mode != Mode::Singleton => "a virtual IP follows the one active instance",
        "backend" if matches!(mode, Mode::Ring(_)) => {
            return Err(format!(
                "`backend` needs mode singleton, spread or replicas(N) (this app is {mode}): a ring's partitions move one by one, a backend process cannot follow them"
            ))
        }
        "lease_ttl" if !matches!(mode, Mode::Singleton | Mode::Ring(_)) => {
            return Err(format!(
                "`lease_ttl` needs mode singleton or ring(P) (this app is {mode}): only elections and partition claims hold leases"
            ))
        }
        "weight" if !matches!(mode, Mode::Spread | Mode::Replicas(_)) => {
            return Err(format!(
                "a service `weight` needs mode spread or replicas(N) (this app is {mode}): weights balance load between pool instances"
            ))
        }
        _ => return Ok(()),
    };
    Err(format!(
        "`{option}` needs mode singleton (this app is {mode}): {why}"
    ))
}

/// A lifecycle hook and the modes it fits.
#[derive(Debug, Clone, Copy)]
pub struct Hook {
    /// The hook's name, as in `#[on_active]`.
    pub name: &'static str,
    /// The modes it fits, for messages (`"singleton"`, `"every mode"`...).
    pub modes: &'static str,
    fits: fn(Mode) -> bool,
}

impl Hook {
    /// Whether the hook fits `mode`.
    pub fn fits(&self, mode: Mode) -> bool {
        (self.fits)(mode)
    }

    /// Whether the hook fits every mode.
    pub fn fits_every_mode(&self) -> bool {
        [
            Mode::Singleton,
            Mode::Spread,
            Mode::Replicas(1),
            Mode::Ring(1),
        ]
        .into_iter()
        .all(|m| self.fits(m))
    }
}

fn singleton(m: Mode) -> bool {
    m == Mode::Singleton
}
fn instances(m: Mode) -> bool {
    m != Mode::Singleton
}
fn ring(m: Mode) -> bool {
    matches!(m, Mode::Ring(_))
}
fn movable(m: Mode) -> bool {
    matches!(m, Mode::Singleton | Mode::Replicas(_))
}
fn any(_: Mode) -> bool {
    true
}

/// Every lifecycle hook, with the modes it fits.
pub const HOOKS: &[Hook] = &[
    Hook {
        name: "on_active",
        modes: "singleton",
        fits: singleton,
    },
    Hook {
        name: "on_standby",
        modes: "singleton",
        fits: singleton,
    },
    Hook {
        name: "on_leader_change",
        modes: "singleton",
        fits: singleton,
    },
    Hook {
        name: "on_start",
        modes: "spread, replicas(N) and ring(P)",
        fits: instances,
    },
    Hook {
        name: "on_stop",
        modes: "spread, replicas(N) and ring(P)",
        fits: instances,
    },
    Hook {
        name: "on_own",
        modes: "ring(P)",
        fits: ring,
    },
    Hook {
        name: "on_release",
        modes: "ring(P)",
        fits: ring,
    },
    Hook {
        name: "on_member_join",
        modes: "every mode",
        fits: any,
    },
    Hook {
        name: "on_member_leave",
        modes: "every mode",
        fits: any,
    },
    Hook {
        name: "on_health_change",
        modes: "every mode",
        fits: any,
    },
    Hook {
        name: "on_migration_start",
        modes: "singleton and replicas(N)",
        fits: movable,
    },
    Hook {
        name: "on_migration_complete",
        modes: "singleton and replicas(N)",
        fits: movable,
    },
    Hook {
        name: "on_placement_invalid",
        modes: "every mode",
        fits: any,
    },
];

/// Looks a hook up by name.
pub fn hook(name: &str) -> Option<&'static Hook> {
    HOOKS.iter().find(|h| h.name == name)
}

/// Checks that hook `name` fits `mode`.
pub fn hook_fits(name: &str, mode: Mode) -> Result<(), String> {
    let hook = hook(name).ok_or_else(|| format!("unknown hook `{name}`"))?;
    if hook.fits(mode) {
        Ok(())
    } else {
        Err(format!(
            "`{name}` fits {} apps only (this app is {mode})",
            hook.modes
        ))
    }
}

/// Whether key-routed handlers (`#[handle(key = ...)]`) fit `mode`.
pub fn keyed_handlers_fit(mode: Mode) -> bool {
    ring(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        assert!(option_fits("sqlite", Mode::Singleton).is_ok());
        assert!(option_fits("sqlite", Mode::Ring(8))
            .expect_err("ring")
            .contains("this app is ring(8)"));
        assert!(option_fits("backend", Mode::Spread).is_ok());
        assert!(option_fits("backend", Mode::Ring(8)).is_err());
        assert!(option_fits("lease_ttl", Mode::Ring(8)).is_ok());
        assert!(option_fits("lease_ttl", Mode::Spread).is_err());
        assert!(option_fits("weight", Mode::Spread).is_ok());
        assert!(option_fits("weight", Mode::Singleton).is_err());
    }

    #[test]
    fn hooks() {
        assert!(hook_fits("on_active", Mode::Singleton).is_ok());
        assert!(hook_fits("on_active", Mode::Spread).is_err());
        assert!(hook_fits("on_own", Mode::Ring(4)).is_ok());
        assert!(hook_fits("on_own", Mode::Singleton).is_err());
        assert!(hook_fits("on_start", Mode::Singleton).is_err());
        assert!(hook_fits("on_member_join", Mode::Replicas(2)).is_ok());
        assert!(hook_fits("on_migration_start", Mode::Spread).is_err());
        assert!(hook_fits("nope", Mode::Spread).is_err());
        assert_eq!(HOOKS.len(), 13);
    }
}
