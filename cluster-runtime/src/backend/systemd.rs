//! `systemd:UNIT`: a unit started and stopped through the systemd Manager on
//! D-Bus (`org.freedesktop.systemd1`).
//!
//! `StartUnit`/`StopUnit`/`RestartUnit` only queue a job; the backend waits
//! for the job's `JobRemoved` signal and fails unless its result is `done`.
//! Health is the unit's `ActiveState` (with `SubState` in the reason).

use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use tokio::sync::OnceCell;
use zbus::proxy::CacheProperties;
use zbus::zvariant::{ObjectPath, OwnedObjectPath};
use zbus::Connection;

use super::{Backend, BackendConfig, BackendError, Health};

/// How long connecting to the bus may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn subscribe(&self) -> zbus::Result<()>;
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: ObjectPath<'_>,
        unit: &str,
        result: &str,
    ) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn sub_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;
}

/// A systemd unit as a backend; see the module docs.
#[derive(Debug)]
pub struct SystemdBackend {
    unit: String,
    bus: Option<String>,
    conn: OnceCell<Connection>,
}

impl SystemdBackend {
    /// A backend for a `systemd:` spec (`.service` is added to a name
    /// without a unit suffix).
    pub fn new(config: &BackendConfig) -> Result<SystemdBackend, BackendError> {
        let cluster_spec::ops::Backend::Systemd { unit } = &config.spec else {
            return Err(BackendError::Config(format!(
                "{:?} is not a systemd backend",
                config.spec
            )));
        };
        Ok(SystemdBackend {
            unit: unit_name(unit),
            bus: config.systemd_bus.clone(),
            conn: OnceCell::new(),
        })
    }

    /// The full unit name (`app.service`).
    pub fn unit(&self) -> &str {
        &self.unit
    }

    /// Restarts the unit (starts it if it is stopped) and waits for the job.
    pub async fn restart(&self) -> Result<(), BackendError> {
        self.run_job("restart").await
    }

    /// The unit's `ActiveState` and `SubState`, e.g. `("active", "running")`.
    pub async fn state(&self) -> Result<(String, String), BackendError> {
        let unit = self.unit_proxy().await?;
        let load = unit.load_state().await.map_err(|e| self.err("query", e))?;
        if load == "not-found" {
            return Err(BackendError::UnitNotFound {
                unit: self.unit.clone(),
            });
        }
        let active = unit
            .active_state()
            .await
            .map_err(|e| self.err("query", e))?;
        let sub = unit.sub_state().await.map_err(|e| self.err("query", e))?;
        Ok((active, sub))
    }

    fn address(&self) -> String {
        self.bus
            .clone()
            .unwrap_or_else(|| "the system bus".to_owned())
    }

    async fn connection(&self) -> Result<&Connection, BackendError> {
        self.conn
            .get_or_try_init(|| async {
                let connect = async {
                    match &self.bus {
                        None => Connection::system().await,
                        Some(address) => {
                            zbus::connection::Builder::address(address.as_str())?
                                .build()
                                .await
                        }
                    }
                };
                match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                    Ok(Ok(conn)) => Ok(conn),
                    Ok(Err(e)) => Err(BackendError::BusUnreachable {
                        address: self.address(),
                        reason: e.to_string(),
                    }),
                    Err(_) => Err(BackendError::BusUnreachable {
                        address: self.address(),
                        reason: format!("no answer within {CONNECT_TIMEOUT:?}"),
                    }),
                }
            })
            .await
    }

    async fn manager(&self) -> Result<ManagerProxy<'static>, BackendError> {
        let conn = self.connection().await?;
        ManagerProxy::new(conn)
            .await
            .map_err(|e| self.err("connect", e))
    }

    async fn unit_proxy(&self) -> Result<UnitProxy<'static>, BackendError> {
        let manager = self.manager().await?;
        let path = manager
            .load_unit(&self.unit)
            .await
            .map_err(|e| self.err("load", e))?;
        UnitProxy::builder(manager.inner().connection())
            .path(path)
            .map_err(|e| self.err("load", e))?
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(|e| self.err("load", e))
    }

    /// Queues a start/stop/restart job and waits for its `JobRemoved`.
    async fn run_job(&self, op: &'static str) -> Result<(), BackendError> {
        let manager = self.manager().await?;
        // Subscribe before queueing: the job may finish before the call returns.
        // (systemd refuses a second Subscribe on one connection; that is fine.)
        match manager.subscribe().await {
            Ok(()) => {}
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.systemd1.AlreadySubscribed" => {}
            Err(e) => return Err(self.err(op, e)),
        }
        let mut removed = manager
            .receive_job_removed()
            .await
            .map_err(|e| self.err(op, e))?;
        let job = match op {
            "start" => manager.start_unit(&self.unit, "replace").await,
            "stop" => manager.stop_unit(&self.unit, "replace").await,
            _ => manager.restart_unit(&self.unit, "replace").await,
        };
        let job = match job {
            Ok(job) => job,
            Err(e) if op == "stop" && is_no_such_unit(&e) => return Ok(()),
            Err(e) => return Err(self.err(op, e)),
        };
        while let Some(signal) = removed.next().await {
            let Ok(args) = signal.args() else { continue };
            if args.job().as_str() != job.as_str() {
                continue;
            }
            return match args.result() {
                &"done" => {
                    tracing::info!(target: "cluster::backend", unit = %self.unit, op, "systemd job done");
                    Ok(())
                }
                other => Err(BackendError::Systemd {
                    op,
                    unit: self.unit.clone(),
                    reason: format!("job finished with result `{other}`"),
                }),
            };
        }
        Err(BackendError::BusUnreachable {
            address: self.address(),
            reason: format!(
                "the bus closed while waiting for the {op} job of `{}`",
                self.unit
            ),
        })
    }

    fn err(&self, op: &'static str, e: zbus::Error) -> BackendError {
        if is_no_such_unit(&e) {
            return BackendError::UnitNotFound {
                unit: self.unit.clone(),
            };
        }
        match e {
            zbus::Error::InputOutput(_) | zbus::Error::Handshake(_) | zbus::Error::Address(_) => {
                BackendError::BusUnreachable {
                    address: self.address(),
                    reason: e.to_string(),
                }
            }
            zbus::Error::MethodError(name, _, _)
                if name.as_str() == "org.freedesktop.DBus.Error.ServiceUnknown" =>
            {
                BackendError::BusUnreachable {
                    address: self.address(),
                    reason: "no systemd (org.freedesktop.systemd1) on this bus".to_owned(),
                }
            }
            other => BackendError::Systemd {
                op,
                unit: self.unit.clone(),
                reason: other.to_string(),
            },
        }
    }
}

fn is_no_such_unit(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(name, _, _)
        if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit"
            || name.as_str() == "org.freedesktop.systemd1.LoadFailed")
}

/// `app` → `app.service`; names with a unit suffix stay as they are.
fn unit_name(unit: &str) -> String {
    const SUFFIXES: &[&str] = &[
        ".service", ".socket", ".target", ".timer", ".mount", ".path", ".scope", ".slice",
    ];
    if SUFFIXES.iter().any(|s| unit.ends_with(s)) {
        unit.to_owned()
    } else {
        format!("{unit}.service")
    }
}

impl Backend for SystemdBackend {
    fn kind(&self) -> &'static str {
        "systemd"
    }

    fn start(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.run_job("start"))
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.run_job("stop"))
    }

    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(async move {
            match self.state().await {
                Ok((active, sub)) => match active.as_str() {
                    "active" => Health::Healthy,
                    "activating" | "reloading" => Health::Starting,
                    "inactive" => Health::Stopped,
                    _ => Health::Unhealthy(format!("unit `{}` is {active} ({sub})", self.unit)),
                },
                Err(e) => Health::Unhealthy(e.to_string()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_become_services() {
        assert_eq!(unit_name("app"), "app.service");
        assert_eq!(unit_name("app.socket"), "app.socket");
        assert_eq!(unit_name("app@1"), "app@1.service");
    }
}
