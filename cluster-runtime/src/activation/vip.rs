//! The virtual-IP step: acquire on becoming active, release on demotion.

use futures::future::BoxFuture;

use crate::lease::Validity;

use super::{Gauge, LostOrder, Step, StepImpl};
use crate::vip::VipManager;

struct VipStep {
    manager: VipManager,
}

/// The step for `vip = "CIDR dev IFACE"`.
pub(crate) fn step(manager: VipManager) -> Step {
    Step {
        name: "vip",
        up_action: "vip.acquired",
        down_action: "vip.released",
        imp: Box::new(VipStep { manager }),
    }
}

impl StepImpl for VipStep {
    fn up<'a>(&'a self, _lease: &'a Validity) -> BoxFuture<'a, Result<serde_json::Value, String>> {
        Box::pin(async move {
            self.manager.acquire().await.map_err(|e| e.to_string())?;
            Ok(serde_json::json!({ "vip": self.manager.config().vip.to_string() }))
        })
    }

    fn down(&self, _lease_lost: bool) -> BoxFuture<'_, Result<serde_json::Value, String>> {
        // One netlink round trip, never waits on NATS: also right when cut off.
        Box::pin(async move {
            self.manager.release().await.map_err(|e| e.to_string())?;
            Ok(serde_json::json!({ "vip": self.manager.config().vip.to_string() }))
        })
    }

    /// A standby holds no VIP: this removes one a crashed (SIGKILLed)
    /// predecessor left on the interface when the node restarts. One node
    /// per host manages a given VIP.
    fn standby(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.manager.release().await {
                tracing::warn!(error = %e, "could not remove a stale VIP");
            }
        })
    }

    fn gauge(&self) -> Option<Gauge> {
        Some(Gauge::VipHeld)
    }

    fn when_lease_lost(&self) -> LostOrder {
        LostOrder::First
    }
}
