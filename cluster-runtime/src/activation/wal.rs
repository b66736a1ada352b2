//! The database steps of becoming active: take the WAL fence and promote
//! the caught-up replica (first), start shipping commits under the new
//! epoch (before the backend starts, so its first write is shipped); on
//! stepping down, the backend stops first and the final flush then ships
//! its last write.
//!
//! `wal.promote` takes `wal.head` for the lease's epoch *before* its
//! catch-up (DESIGN §4.7): once it has, the deposed primary cannot reserve
//! another TXID, and everything the deposed primary acknowledged as synced
//! was stored before this catch-up lists the bucket (see
//! `wal::replicator::ack_gate`).

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::lease::Validity;

use super::{Step, StepImpl};
use crate::db::Replicated;

struct Promote(Arc<Replicated>);
struct Replicate(Arc<Replicated>);

/// The steps for `sqlite = "PATH"`: `wal.promote` (fence, catch-up,
/// promotion) goes first (before the VIP), `wal.replicate` after the VIP
/// and before the backend.
pub(crate) fn steps(replicated: &Arc<Replicated>) -> (Step, Step) {
    (
        Step {
            name: "wal.promote",
            up_action: "wal.promoted",
            down_action: "wal.demoted",
            imp: Box::new(Promote(Arc::clone(replicated))),
        },
        Step {
            name: "wal.replicate",
            up_action: "wal.replicating",
            down_action: "wal.stopped",
            imp: Box::new(Replicate(Arc::clone(replicated))),
        },
    )
}

impl StepImpl for Promote {
    fn up<'a>(&'a self, lease: &'a Validity) -> BoxFuture<'a, Result<serde_json::Value, String>> {
        Box::pin(async move {
            // Fence first, then catch up: the order the ack gate relies on.
            let previous = self.0.take_fence(lease).await.map_err(|e| e.to_string())?;
            let txid = self.0.promote().await.map_err(|e| e.to_string())?;
            Ok(serde_json::json!({
                "txid": txid,
                "path": self.0.data_path().display().to_string(),
                "fence": {
                    "epoch": lease.epoch(),
                    "previous": previous.map(|h| serde_json::json!({"epoch": h.epoch, "txid": h.txid})),
                },
            }))
        })
    }

    fn down(&self, _lease_lost: bool) -> BoxFuture<'_, Result<serde_json::Value, String>> {
        // The data path stays; following starts in standby. `wal.head`
        // stays ours until a successor takes it with a higher epoch.
        self.0.drop_fence();
        Box::pin(async { Ok(serde_json::json!({})) })
    }

    fn standby(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.0.start_following())
    }
}

impl StepImpl for Replicate {
    fn up<'a>(&'a self, lease: &'a Validity) -> BoxFuture<'a, Result<serde_json::Value, String>> {
        Box::pin(async move {
            let txid = self
                .0
                .start_replicating(lease)
                .await
                .map_err(|e| e.to_string())?;
            Ok(serde_json::json!({ "txid": txid }))
        })
    }

    fn down(&self, lease_lost: bool) -> BoxFuture<'_, Result<serde_json::Value, String>> {
        Box::pin(async move {
            let txid = self
                .0
                .stop_replicating(!lease_lost)
                .await
                .map_err(|e| e.to_string())?;
            Ok(serde_json::json!({ "txid": txid, "flushed": !lease_lost }))
        })
    }
}
