//! The tests' NATS: one real `nats-server -js` from the shared launcher.

use cluster_runtime::nats_server::{NatsServer, ServerOptions};

/// Starts a JetStream server on a free port with a temporary store.
pub async fn start_server() -> NatsServer {
    NatsServer::start(ServerOptions::default())
        .await
        .expect("start nats-server (run scripts/test.sh to install it)")
}
