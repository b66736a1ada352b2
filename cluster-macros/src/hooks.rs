//! The method attributes of an `#[cluster::app] impl` block: the lifecycle
//! hooks with their signatures, and `#[handle]`.

use proc_macro2::TokenStream;
use quote::quote;

/// A hook argument after `ctx: &AppContext`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    /// `leader: Option<String>`
    Leader,
    /// `node: NodeRecord`
    Node,
    /// `partitions: Partitions`
    Partitions,
    /// `healthy: bool`
    Healthy,
    /// `from: String` / `to: String` / `reason: String`
    Text,
}

impl Arg {
    /// The argument's type in generated code.
    pub fn ty(self) -> TokenStream {
        match self {
            Arg::Leader => {
                quote!(::cluster::__private::Option<::cluster::__private::String>)
            }
            Arg::Node => quote!(::cluster::__private::NodeRecord),
            Arg::Partitions => quote!(::cluster::__private::Partitions),
            Arg::Healthy => quote!(bool),
            Arg::Text => quote!(::cluster::__private::String),
        }
    }

    /// The type as the user writes it.
    pub fn written(self) -> &'static str {
        match self {
            Arg::Leader => "Option<String>",
            Arg::Node => "NodeRecord",
            Arg::Partitions => "Partitions",
            Arg::Healthy => "bool",
            Arg::Text => "String",
        }
    }
}

/// How the runtime takes a hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// `AppBuilder::<method>(closure)`.
    Builder,
    /// Not run by this runtime yet: type-checked, then dropped with a
    /// warning (`__private::later_hook`).
    Later,
}

/// One lifecycle hook.
#[derive(Debug)]
pub struct HookDef {
    /// The attribute and builder method name.
    pub name: &'static str,
    /// Its marker trait in `__private::hooks`.
    pub marker: &'static str,
    /// Arguments after `ctx`.
    pub args: &'static [(&'static str, Arg)],
    pub runtime: Runtime,
}

impl HookDef {
    /// `(&self, ctx: &AppContext, leader: Option<String>)`.
    pub fn signature(&self) -> String {
        let mut s = String::from("async fn (&self, ctx: &AppContext");
        for (name, arg) in self.args {
            s.push_str(&format!(", {name}: {}", arg.written()));
        }
        s.push_str(") -> cluster::Result<()>");
        s
    }
}

use Arg::*;
use Runtime::*;

/// Every lifecycle hook (the same names as `cluster_spec::fit::HOOKS`).
pub const HOOKS: &[HookDef] = &[
    HookDef {
        name: "on_active",
        marker: "OnActive",
        args: &[],
        runtime: Builder,
    },
    HookDef {
        name: "on_standby",
        marker: "OnStandby",
        args: &[],
        runtime: Builder,
    },
    HookDef {
        name: "on_leader_change",
        marker: "OnLeaderChange",
        args: &[("leader", Leader)],
        runtime: Builder,
    },
    HookDef {
        name: "on_start",
        marker: "OnStart",
        args: &[],
        runtime: Builder,
    },
    HookDef {
        name: "on_stop",
        marker: "OnStop",
        args: &[],
        runtime: Builder,
    },
    HookDef {
        name: "on_own",
        marker: "OnOwn",
        args: &[("partitions", Partitions)],
        runtime: Builder,
    },
    HookDef {
        name: "on_release",
        marker: "OnRelease",
        args: &[("partitions", Partitions)],
        runtime: Builder,
    },
    HookDef {
        name: "on_member_join",
        marker: "OnMemberJoin",
        args: &[("node", Node)],
        runtime: Builder,
    },
    HookDef {
        name: "on_member_leave",
        marker: "OnMemberLeave",
        args: &[("node", Node)],
        runtime: Builder,
    },
    HookDef {
        name: "on_health_change",
        marker: "OnHealthChange",
        args: &[("healthy", Healthy)],
        runtime: Later,
    },
    HookDef {
        name: "on_migration_start",
        marker: "OnMigrationStart",
        args: &[("from", Text), ("to", Text)],
        runtime: Later,
    },
    HookDef {
        name: "on_migration_complete",
        marker: "OnMigrationComplete",
        args: &[("from", Text), ("to", Text)],
        runtime: Later,
    },
    HookDef {
        name: "on_placement_invalid",
        marker: "OnPlacementInvalid",
        args: &[("reason", Text)],
        runtime: Later,
    },
];

/// The handler attribute.
pub const HANDLE: &str = "handle";

/// Looks a hook up by attribute name.
pub fn hook(name: &str) -> Option<&'static HookDef> {
    HOOKS.iter().find(|h| h.name == name)
}

/// Whether `name` is one of our method attributes.
pub fn is_method_attribute(name: &str) -> bool {
    name == HANDLE || hook(name).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_hooks_as_the_spec() {
        let ours: Vec<&str> = HOOKS.iter().map(|h| h.name).collect();
        let spec: Vec<&str> = cluster_spec::fit::HOOKS.iter().map(|h| h.name).collect();
        assert_eq!(ours, spec);
    }

    #[test]
    fn signatures() {
        assert_eq!(
            hook("on_leader_change").map(HookDef::signature).as_deref(),
            Some(
                "async fn (&self, ctx: &AppContext, leader: Option<String>) -> cluster::Result<()>"
            )
        );
    }
}
