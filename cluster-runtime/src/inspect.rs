//! Reads a platform's state straight from NATS, without asking any node:
//! members from `P_nodes`, leaders and epochs from each app's election key.
//! The `cluster` CLI is built on this.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::app::Role;
use crate::election::LeaderRecord;
use crate::error::{Error, Result};
use crate::lease::KeyState;
use crate::membership::NodeRecord;
use crate::naming::Names;
use crate::transport::Transport;

/// One app as the platform sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppView {
    /// Mode, as reported by the nodes running it.
    pub mode: Option<String>,
    /// Active node (singletons), from the election key.
    pub leader: Option<String>,
    /// The active node's epoch.
    pub epoch: Option<u64>,
    /// Nodes standing by.
    pub standbys: Vec<String>,
    /// Nodes running a pool instance.
    pub running: Vec<String>,
}

/// The whole platform.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformView {
    /// Platform name.
    pub platform: String,
    /// Apps by name.
    pub apps: BTreeMap<String, AppView>,
    /// Live node records by node id.
    pub members: BTreeMap<String, NodeRecord>,
}

impl PlatformView {
    /// Reads the current view. Fails with a clear message when the platform
    /// has never had a node.
    pub async fn read(transport: &Transport, names: &Names) -> Result<PlatformView> {
        let js = transport.jetstream();
        let nodes_bucket = names.nodes_bucket();
        let kv = js.get_key_value(&nodes_bucket).await.map_err(|_| {
            Error::config(format!(
                "platform `{}` has no members: no node has ever registered (bucket {nodes_bucket} does not exist)",
                names.platform()
            ))
        })?;
        let mut members = BTreeMap::new();
        let keys: Vec<String> = kv
            .keys()
            .await
            .map_err(|e| Error::nats(format!("list keys of {nodes_bucket}"), e))?
            .try_collect()
            .await
            .map_err(|e| Error::nats(format!("list keys of {nodes_bucket}"), e))?;
        for key in keys {
            if let Ok(Some(entry)) = kv.entry(key).await {
                if entry.operation == async_nats::jetstream::kv::Operation::Put {
                    if let Ok(rec) = serde_json::from_slice::<NodeRecord>(&entry.value) {
                        members.insert(rec.node.clone(), rec);
                    }
                }
            }
        }

        let mut apps: BTreeMap<String, AppView> = BTreeMap::new();
        for rec in members.values() {
            for (name, app) in &rec.apps {
                let view = apps.entry(name.clone()).or_default();
                view.mode = Some(app.mode.to_string());
                match app.role {
                    Role::Standby => view.standbys.push(rec.node.clone()),
                    Role::Running => view.running.push(rec.node.clone()),
                    _ => {}
                }
            }
        }
        // Apps with a coordination bucket but no live node still show up.
        let (prefix, suffix) = names.coord_bucket_affixes();
        let stream_prefix = format!("KV_{prefix}");
        let mut streams = js.stream_names();
        while let Some(stream) = streams.next().await {
            let Ok(stream) = stream else { break };
            if let Some(app) = stream
                .strip_prefix(&stream_prefix)
                .and_then(|s| s.strip_suffix(suffix))
            {
                apps.entry(app.to_owned()).or_default();
            }
        }
        for (name, view) in apps.iter_mut() {
            let Ok(coord) = js.get_key_value(names.app_coord_bucket(name)).await else {
                continue;
            };
            let entry = coord.entry(names.election_key()).await.ok().flatten();
            let state = KeyState::from_entry(entry.as_ref());
            if let KeyState::Held { seq, value } = state {
                if let Some((holder, epoch)) = LeaderRecord::decode(seq, &value) {
                    view.leader = Some(holder);
                    view.epoch = Some(epoch);
                }
            }
        }
        Ok(PlatformView {
            platform: names.platform().to_owned(),
            apps,
            members,
        })
    }
}
