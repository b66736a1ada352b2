// Generated code names everything by absolute path: it compiles without
// the standard prelude.
#![no_implicit_prelude]

#[::cluster::app(mode = "singleton", lease_ttl = "3s", services(http(port = 8080, path = "/", protocol = "http")))]
#[derive(::std::default::Default)]
pub struct Counter {
    value: ::std::sync::atomic::AtomicU64,
}

#[::cluster::app]
impl Counter {
    #[on_active]
    async fn activate(&self, _ctx: &::cluster::AppContext) -> ::cluster::Result<()> {
        self.value.store(1, ::std::sync::atomic::Ordering::SeqCst);
        ::std::result::Result::Ok(())
    }

    #[on_leader_change]
    async fn leader(
        &self,
        _ctx: &::cluster::AppContext,
        _leader: ::std::option::Option<::std::string::String>,
    ) -> ::cluster::Result<()> {
        ::std::result::Result::Ok(())
    }

    #[on_migration_start]
    async fn moving(
        &self,
        _ctx: &::cluster::AppContext,
        _from: ::std::string::String,
        _to: ::std::string::String,
    ) -> ::cluster::Result<()> {
        ::std::result::Result::Ok(())
    }
}

#[::cluster::app(mode = "ring(16)")]
#[derive(::std::default::Default)]
pub struct Cache;

#[::cluster::app]
impl Cache {
    #[on_own]
    async fn own(
        &self,
        _ctx: &::cluster::AppContext,
        _partitions: ::cluster::prelude::Partitions,
    ) -> ::cluster::Result<()> {
        ::std::result::Result::Ok(())
    }
}

mod entry {
    ::cluster::main!();

    pub fn generated() {
        let _ = main;
    }
}

mod explicit {
    ::cluster::main!(apps = [super::Counter, super::Cache]);

    pub fn generated() {
        let _ = main;
    }
}

fn main() {
    entry::generated();
    explicit::generated();
}
