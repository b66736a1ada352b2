// Handlers: plain, renamed, without request, key-routed on a ring app,
// under #[cfg]; generated clients have one method per handler.
use cluster::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};

#[cluster::app(mode = "singleton")]
#[derive(Default)]
pub struct Counter {
    value: AtomicU64,
}

#[cluster::app]
impl Counter {
    /// Adds `by`.
    #[handle]
    async fn incr(&self, _ctx: &AppContext, by: u64) -> cluster::Result<u64> {
        Ok(self.value.fetch_add(by, Ordering::SeqCst) + by)
    }

    #[handle(name = "value")]
    async fn current(&self, _ctx: &AppContext) -> cluster::Result<u64> {
        Ok(self.value.load(Ordering::SeqCst))
    }

    #[cfg(any())]
    #[handle]
    async fn never(&self, _ctx: &AppContext) -> cluster::Result<u64> {
        this_does_not_compile()
    }

    #[handle]
    async fn forward(&self, ctx: &AppContext, key: String) -> Result<Option<String>, HandlerError> {
        // Calling another app through its generated client.
        Ok(cluster::call::<Cache>(ctx).get(Get { key }).await?)
    }
}

#[derive(Debug, Clone, cluster::__private::serde::Serialize, cluster::__private::serde::Deserialize)]
#[serde(crate = "cluster::__private::serde")]
pub struct Get {
    pub key: String,
}

#[cluster::app(mode = "ring(64)", placement = "label=zone-a")]
#[derive(Default)]
pub struct Cache {}

#[cluster::app]
impl Cache {
    #[handle(key = req.key)]
    async fn get(&self, _ctx: &AppContext, req: Get) -> cluster::Result<Option<String>> {
        Ok(Some(req.key))
    }

    #[on_own]
    async fn own(&self, _ctx: &AppContext, _partitions: Partitions) -> cluster::Result<()> {
        Ok(())
    }
}

// The generated clients' methods, by type.
#[allow(dead_code)]
async fn clients(ctx: &AppContext) -> Result<(), RpcError> {
    let counter: CounterClient = cluster::call::<Counter>(ctx);
    let _: u64 = counter.incr(5).await?;
    let _: u64 = counter.current().await?;
    let _: Option<String> = cluster::call::<Cache>(ctx).get(Get { key: "k".into() }).await?;
    let _ = counter.on_platform("prod");
    Ok(())
}

fn main() {
    let app = cluster::__private::build_app::<Counter>().expect("builds");
    assert_eq!(app.methods().collect::<Vec<_>>(), ["forward", "incr", "value"]);
}
