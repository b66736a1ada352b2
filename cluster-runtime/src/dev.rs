//! `--dev`: a local `nats-server -js` child so a newcomer sees a working
//! cluster with nothing configured.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::nats_server::{NatsServer, ServerOptions};

/// Starts the local server and points `config` at it.
pub(crate) async fn start(config: &mut Config) -> Result<NatsServer> {
    let opts = ServerOptions {
        store_dir: config.data_dir.as_ref().map(|d| d.join("nats")),
        ..ServerOptions::default()
    };
    let server = NatsServer::start(opts)
        .await
        .map_err(|e| Error::config(format!("--dev: cannot start a local nats-server: {e}")))?;
    tracing::info!(url = %server.url(), "dev mode: started a local nats-server");
    config.nats.urls = vec![server.url()];
    Ok(server)
}
