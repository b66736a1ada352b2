//! Every NATS subject, bucket and stream name the platform uses.
//!
//! Nothing else in the workspace formats a NATS name: if a name is not built
//! here, it is a bug. Platform and app names are `[a-z0-9-]+` so `_` can
//! separate the parts of bucket names unambiguously and `.` never appears
//! inside a subject token.

use std::fmt;

// Name validation is the spec grammar, shared with the macros.
pub use cluster_spec::naming::{
    validate_app, validate_node, validate_platform, NameError, RESERVED_APP_NAMES,
};

/// The app token of platform-wide audit entries (`P._.audit._.ACTION`):
/// membership changes and platform locks belong to no app. App names never
/// contain `_`, so it cannot collide.
pub const PLATFORM_SCOPE: &str = "_";

/// Key of a ring app's partition count in its coordination bucket.
pub const RING_CONFIG_KEY: &str = "ring";
/// Prefix of a ring member's lease key (`member.<node>`).
pub const RING_MEMBER_PREFIX: &str = "member.";
/// Prefix of a partition claim key (`p.<N>`).
pub const RING_CLAIM_PREFIX: &str = "p.";
/// The keys a ring node watches, in one ordered consumer.
pub const RING_WATCH_KEYS: [&str; 3] = ["ring", "member.>", "p.>"];

/// The names belonging to one platform.
///
/// ```
/// use cluster_runtime::naming::Names;
/// let n = Names::new("prod").unwrap();
/// assert_eq!(n.app_coord_bucket("counter"), "prod_counter_coord");
/// assert_eq!(n.api_subject("counter", "incr"), "prod._.api.counter.incr");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Names {
    platform: String,
}

impl fmt::Debug for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Names").field(&self.platform).finish()
    }
}

impl Names {
    /// Names for platform `platform` (validated).
    pub fn new(platform: &str) -> Result<Self, NameError> {
        validate_platform(platform)?;
        Ok(Self {
            platform: platform.to_owned(),
        })
    }

    /// The platform name.
    pub fn platform(&self) -> &str {
        &self.platform
    }

    // ---- KV buckets -------------------------------------------------------

    /// KV bucket holding the app's own data (`ctx.kv()`).
    pub fn app_kv_bucket(&self, app: &str) -> String {
        format!("{}_{}", self.platform, app)
    }

    /// KV bucket holding the app's election lease, locks and partition claims.
    pub fn app_coord_bucket(&self, app: &str) -> String {
        format!("{}_{}_coord", self.platform, app)
    }

    /// The prefix every coordination bucket of this platform starts with, and
    /// the suffix it ends with (used to enumerate apps from NATS alone).
    pub fn coord_bucket_affixes(&self) -> (String, &'static str) {
        (format!("{}_", self.platform), "_coord")
    }

    /// KV bucket of live node records.
    pub fn nodes_bucket(&self) -> String {
        format!("{}_nodes", self.platform)
    }

    /// KV bucket of platform-wide locks, controller lease and config.
    pub fn platform_bucket(&self) -> String {
        format!("{}_platform", self.platform)
    }

    /// KV bucket of placement decisions.
    pub fn placement_bucket(&self) -> String {
        format!("{}_placement", self.platform)
    }

    /// KV bucket of exposed service records.
    pub fn services_bucket(&self) -> String {
        format!("{}_services", self.platform)
    }

    // ---- streams and object stores ---------------------------------------

    /// Stream of platform-wide events.
    pub fn platform_events_stream(&self) -> String {
        format!("{}_events", self.platform)
    }

    /// Stream of audit entries.
    pub fn audit_stream(&self) -> String {
        format!("{}_audit", self.platform)
    }

    /// Stream of the app's durable events.
    pub fn app_events_stream(&self, app: &str) -> String {
        format!("{}_{}_events", self.platform, app)
    }

    /// Object store holding the app's SQLite replica (Litestream layout).
    pub fn app_wal_bucket(&self, app: &str) -> String {
        format!("{}_{}_wal", self.platform, app)
    }

    /// Object store holding the app's manual snapshots.
    pub fn app_snapshots_bucket(&self, app: &str) -> String {
        format!("{}_{}_snapshots", self.platform, app)
    }

    // ---- keys --------------------------------------------------------------

    /// Key of a singleton's election lease inside its coordination bucket.
    pub fn election_key(&self) -> &'static str {
        "election"
    }

    /// Key of lock `name` inside a coordination bucket (`P_A_coord` for app
    /// locks, `P_platform` for platform locks). The `lock.` prefix keeps
    /// locks apart from the election key and partition claims.
    pub fn lock_key(&self, name: &str) -> String {
        format!("lock.{name}")
    }

    // ---- subjects ----------------------------------------------------------

    /// Call an app method: the active (singleton) or any instance (pool).
    pub fn api_subject(&self, app: &str, method: &str) -> String {
        format!("{}._.api.{}.{}", self.platform, app, method)
    }

    /// Wildcard covering every method of an app's API.
    pub fn api_wildcard(&self, app: &str) -> String {
        format!("{}._.api.{}.*", self.platform, app)
    }

    /// Call the owner of ring partition `partition`.
    pub fn partition_subject(&self, app: &str, partition: u32, method: &str) -> String {
        format!("{}._.api.{}.p.{}.{}", self.platform, app, partition, method)
    }

    /// Wildcard covering every method of one ring partition.
    pub fn partition_wildcard(&self, app: &str, partition: u32) -> String {
        format!("{}._.api.{}.p.{}.>", self.platform, app, partition)
    }

    /// Call one specific instance of an app.
    pub fn instance_subject(&self, app: &str, node: &str, method: &str) -> String {
        format!("{}.{}.node.{}.{}", self.platform, app, node, method)
    }

    /// Wildcard covering every method of one instance.
    pub fn instance_wildcard(&self, app: &str, node: &str) -> String {
        format!("{}.{}.node.{}.*", self.platform, app, node)
    }

    /// Broadcast a method call to every instance of an app.
    pub fn broadcast_subject(&self, app: &str, method: &str) -> String {
        format!("{}.{}.all.{}", self.platform, app, method)
    }

    /// Wildcard covering every broadcast method of an app.
    pub fn broadcast_wildcard(&self, app: &str) -> String {
        format!("{}.{}.all.*", self.platform, app)
    }

    /// An app-internal event of type `event_type` (may contain `.` and wildcards).
    pub fn app_event_subject(&self, app: &str, event_type: &str) -> String {
        format!("{}.{}.events.{}", self.platform, app, event_type)
    }

    /// A platform-wide event.
    pub fn platform_event_subject(&self, event_type: &str) -> String {
        format!("{}._.events.{}", self.platform, event_type)
    }

    /// An audit entry.
    pub fn audit_subject(&self, app: &str, action: &str) -> String {
        format!("{}._.audit.{}.{}", self.platform, app, action)
    }

    /// Wildcard covering every audit entry (the subjects of `P_audit`).
    pub fn audit_wildcard(&self) -> String {
        format!("{}._.audit.>", self.platform)
    }

    /// Audit subjects of one app (or every app: `None`) and one category (or
    /// every category). Platform-wide entries use the app token
    /// [`PLATFORM_SCOPE`].
    pub fn audit_filter(&self, app: Option<&str>, category: Option<&str>) -> String {
        match (app, category) {
            (None, None) => self.audit_wildcard(),
            (app, category) => format!(
                "{}._.audit.{}.{}.>",
                self.platform,
                app.unwrap_or("*"),
                category.unwrap_or("*")
            ),
        }
    }

    /// An operator command sent by the CLI to the nodes.
    pub fn control_subject(&self, verb: &str) -> String {
        format!("{}._.control.{}", self.platform, verb)
    }

    /// The queue group pool instances of an app share.
    pub fn queue_group(&self, app: &str) -> String {
        app.to_owned()
    }

    /// Wildcard covering every app-internal event (the subjects of the app's
    /// durable events stream).
    pub fn app_events_wildcard(&self, app: &str) -> String {
        format!("{}.{}.events.>", self.platform, app)
    }

    /// Wildcard covering every platform-wide event (the subjects of the
    /// platform events stream).
    pub fn platform_events_wildcard(&self) -> String {
        format!("{}._.events.>", self.platform)
    }

    /// Durable consumer name of app `app`'s subscription `name` on the shared
    /// platform events stream (prefixed so apps cannot collide).
    pub fn platform_events_consumer(&self, app: &str, name: &str) -> String {
        format!("{app}_{name}")
    }

    /// A subject nobody subscribes to, requested by an instance of `app` on
    /// node `node` right after (un)subscribing: the server's no-responders
    /// answer proves it has processed the SUB/UNSUB sent before it.
    pub fn sync_subject(&self, app: &str, node: &str) -> String {
        format!("{}.{}.sync.{}", self.platform, app, node)
    }

    /// The NATS micro protocol (`$SRV`) subjects one service instance answers
    /// on: every verb for all services, for service `service`, and for
    /// instance `id` of it. The verb token is a wildcard.
    pub fn micro_subjects(&self, service: &str, id: &str) -> [String; 3] {
        [
            "$SRV.*".to_owned(),
            format!("$SRV.*.{service}"),
            format!("$SRV.*.{service}.{id}"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_design_table() {
        let n = Names::new("prod").expect("valid");
        assert_eq!(n.app_kv_bucket("cache"), "prod_cache");
        assert_eq!(n.app_coord_bucket("cache"), "prod_cache_coord");
        assert_eq!(n.nodes_bucket(), "prod_nodes");
        assert_eq!(n.platform_bucket(), "prod_platform");
        assert_eq!(n.placement_bucket(), "prod_placement");
        assert_eq!(n.services_bucket(), "prod_services");
        assert_eq!(n.platform_events_stream(), "prod_events");
        assert_eq!(n.audit_stream(), "prod_audit");
        assert_eq!(n.app_events_stream("cache"), "prod_cache_events");
        assert_eq!(n.app_wal_bucket("db"), "prod_db_wal");
        assert_eq!(n.app_snapshots_bucket("db"), "prod_db_snapshots");
        assert_eq!(n.api_subject("cache", "get"), "prod._.api.cache.get");
        assert_eq!(
            n.partition_subject("cache", 7, "get"),
            "prod._.api.cache.p.7.get"
        );
        assert_eq!(
            n.instance_subject("cache", "n1", "get"),
            "prod.cache.node.n1.get"
        );
        assert_eq!(n.broadcast_subject("cache", "get"), "prod.cache.all.get");
        assert_eq!(
            n.app_event_subject("cache", "evicted"),
            "prod.cache.events.evicted"
        );
        assert_eq!(n.platform_event_subject("x"), "prod._.events.x");
        assert_eq!(
            n.audit_subject("cache", "started"),
            "prod._.audit.cache.started"
        );
        assert_eq!(n.control_subject("stepdown"), "prod._.control.stepdown");
        assert_eq!(n.lock_key("jobs"), "lock.jobs");
        assert_eq!(n.audit_wildcard(), "prod._.audit.>");
        assert_eq!(
            n.audit_filter(Some("cache"), None),
            "prod._.audit.cache.*.>"
        );
        assert_eq!(
            n.audit_filter(None, Some("election")),
            "prod._.audit.*.election.>"
        );
        assert_eq!(n.app_events_wildcard("cache"), "prod.cache.events.>");
        assert_eq!(n.platform_events_wildcard(), "prod._.events.>");
        assert_eq!(n.platform_events_consumer("cache", "audit"), "cache_audit");
        assert_eq!(n.sync_subject("cache", "n1"), "prod.cache.sync.n1");
        assert_eq!(
            n.micro_subjects("cache", "ID"),
            ["$SRV.*", "$SRV.*.cache", "$SRV.*.cache.ID"]
        );
    }

    #[test]
    fn invalid_names_are_refused() {
        assert!(matches!(
            validate_platform(""),
            Err(NameError::Empty { .. })
        ));
        assert!(matches!(
            validate_platform("Prod"),
            Err(NameError::Invalid { .. })
        ));
        assert!(matches!(
            validate_app("a.b"),
            Err(NameError::Invalid { .. })
        ));
        assert!(matches!(
            validate_app("a_b"),
            Err(NameError::Invalid { .. })
        ));
        assert!(matches!(
            validate_app("nodes"),
            Err(NameError::Reserved { .. })
        ));
        assert!(validate_app("my-app-2").is_ok());
        assert!(validate_node("node-1").is_ok());
        assert!(validate_node("node 1").is_err());
    }
}
