//! `docker:IMAGE`: a container run through the Docker Engine API (bollard).
//!
//! The container has a fixed name, so a start finds the container a previous
//! run left behind: a running one is kept (idempotent), a stopped one is
//! removed and created again with the current settings. Stop removes it.
//! Health is the container state: running, and Docker's own health status
//! when the image defines a HEALTHCHECK.

use std::collections::HashMap;
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, HealthStatusEnum, HostConfig, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptions, RemoveContainerOptions, StartContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use futures::future::BoxFuture;
use tokio::sync::OnceCell;

use super::{Backend, BackendConfig, BackendError, DockerOptions, Health};

/// Seconds bollard waits for one API answer.
const API_TIMEOUT_SECS: u64 = 120;

/// A container as a backend; see the module docs.
#[derive(Debug)]
pub struct DockerBackend {
    image: String,
    name: String,
    options: DockerOptions,
    env: Vec<String>,
    stop_grace: Duration,
    client: OnceCell<Docker>,
}

impl DockerBackend {
    /// A backend for a `docker:` spec.
    pub fn new(config: &BackendConfig) -> Result<DockerBackend, BackendError> {
        let cluster_spec::ops::Backend::Docker { image } = &config.spec else {
            return Err(BackendError::Config(format!(
                "{:?} is not a docker backend",
                config.spec
            )));
        };
        let name = match &config.docker.name {
            Some(name) => name.clone(),
            None => default_name(image),
        };
        let mut env = config.env.clone();
        env.extend(config.docker.env.clone());
        Ok(DockerBackend {
            image: image.clone(),
            name,
            options: config.docker.clone(),
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            stop_grace: config.stop_grace,
            client: OnceCell::new(),
        })
    }

    /// The container name.
    pub fn name(&self) -> &str {
        &self.name
    }

    async fn client(&self) -> Result<&Docker, BackendError> {
        self.client
            .get_or_try_init(|| async {
                let unreachable = |e: DockerError| BackendError::DockerUnreachable {
                    reason: e.to_string(),
                };
                let docker = match &self.options.socket {
                    Some(path) => Docker::connect_with_unix(
                        path,
                        API_TIMEOUT_SECS,
                        bollard::API_DEFAULT_VERSION,
                    ),
                    None => Docker::connect_with_local_defaults(),
                }
                .map_err(unreachable)?;
                // Speak the engine's API version (older engines refuse newer ones).
                docker.negotiate_version().await.map_err(unreachable)
            })
            .await
    }

    async fn start_inner(&self) -> Result<(), BackendError> {
        let docker = self.client().await?;
        match docker.inspect_container(&self.name, None).await {
            Ok(c) if c.state.as_ref().and_then(|s| s.running) == Some(true) => return Ok(()),
            Ok(_) => self.remove(docker).await?,
            Err(e) if status(&e) == Some(404) => {}
            Err(e) => return Err(self.err("inspect", e)),
        }
        match docker.inspect_image(&self.image).await {
            Ok(_) => {}
            Err(e) if status(&e) == Some(404) => {
                return Err(BackendError::ImageMissing {
                    image: self.image.clone(),
                })
            }
            Err(e) => return Err(self.err("inspect image", e)),
        }
        let mut bindings = HashMap::new();
        let mut exposed = Vec::new();
        for (host, container) in &self.options.ports {
            let key = format!("{container}/tcp");
            exposed.push(key.clone());
            bindings.insert(
                key,
                Some(vec![PortBinding {
                    host_ip: None,
                    host_port: Some(host.to_string()),
                }]),
            );
        }
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            env: Some(self.env.clone()),
            cmd: self.options.cmd.clone(),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            labels: Some(HashMap::from([(
                "cluster.backend".to_owned(),
                "true".to_owned(),
            )])),
            host_config: Some(HostConfig {
                port_bindings: (!bindings.is_empty()).then_some(bindings),
                binds: (!self.options.volumes.is_empty()).then(|| self.options.volumes.clone()),
                network_mode: self.options.network.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(self.name.clone()),
            ..Default::default()
        };
        docker
            .create_container(Some(options), body)
            .await
            .map_err(|e| self.err("create", e))?;
        if let Err(e) = docker
            .start_container(&self.name, None::<StartContainerOptions>)
            .await
        {
            // Leave nothing half-made behind.
            let _ = self.remove(docker).await;
            return Err(self.err("start", e));
        }
        tracing::info!(target: "cluster::backend", container = %self.name, image = %self.image, "backend container started");
        Ok(())
    }

    async fn stop_inner(&self) -> Result<(), BackendError> {
        let grace = i32::try_from(self.stop_grace.as_secs().max(1)).unwrap_or(i32::MAX);
        self.stop_within(grace).await
    }

    /// Stops the container, the engine sending SIGKILL after `grace`
    /// seconds (0: at once), then removes it.
    async fn stop_within(&self, grace: i32) -> Result<(), BackendError> {
        let docker = self.client().await?;
        match docker
            .stop_container(
                &self.name,
                Some(StopContainerOptions {
                    t: Some(grace),
                    signal: None,
                }),
            )
            .await
        {
            Ok(()) => {}
            // 304: already stopped; 404: already gone.
            Err(e) if matches!(status(&e), Some(304 | 404)) => {}
            Err(e) => return Err(self.err("stop", e)),
        }
        self.remove(docker).await?;
        tracing::info!(target: "cluster::backend", container = %self.name, "backend container stopped and removed");
        Ok(())
    }

    /// Force-removes the container and waits until the engine no longer
    /// knows it.
    async fn remove(&self, docker: &Docker) -> Result<(), BackendError> {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        match docker.remove_container(&self.name, Some(options)).await {
            Ok(()) => {}
            Err(e) if status(&e) == Some(404) => return Ok(()),
            // 409: removal already in progress; wait for it below.
            Err(e) if status(&e) == Some(409) => {}
            Err(e) => return Err(self.err("remove", e)),
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match docker.inspect_container(&self.name, None).await {
                Err(e) if status(&e) == Some(404) => return Ok(()),
                Err(e) => return Err(self.err("remove", e)),
                Ok(_) if tokio::time::Instant::now() >= deadline => {
                    return Err(BackendError::Docker {
                        op: "remove",
                        name: self.name.clone(),
                        reason: "the container is still there after 30s".to_owned(),
                    })
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn health_inner(&self) -> Health {
        let docker = match self.client().await {
            Ok(d) => d,
            Err(e) => return Health::Unhealthy(e.to_string()),
        };
        let container = match docker.inspect_container(&self.name, None).await {
            Ok(c) => c,
            Err(e) if status(&e) == Some(404) => return Health::Stopped,
            Err(e) => return Health::Unhealthy(self.err("inspect", e).to_string()),
        };
        let Some(state) = container.state else {
            return Health::Unhealthy(format!("container `{}` has no state", self.name));
        };
        if state.running != Some(true) {
            return match state.status {
                Some(ContainerStateStatusEnum::CREATED) => Health::Starting,
                Some(ContainerStateStatusEnum::RESTARTING) => Health::Starting,
                other => Health::Unhealthy(format!(
                    "container `{}` is {} (exit code {})",
                    self.name,
                    other.map_or_else(|| "not running".to_owned(), |s| s.to_string()),
                    state.exit_code.unwrap_or(-1)
                )),
            };
        }
        match state.health.and_then(|h| h.status) {
            Some(HealthStatusEnum::STARTING) => Health::Starting,
            Some(HealthStatusEnum::UNHEALTHY) => Health::Unhealthy(format!(
                "container `{}` is running but Docker reports it unhealthy",
                self.name
            )),
            _ => Health::Healthy,
        }
    }

    fn err(&self, op: &'static str, e: DockerError) -> BackendError {
        match e {
            DockerError::DockerResponseServerError { message, .. } => BackendError::Docker {
                op,
                name: self.name.clone(),
                reason: message,
            },
            DockerError::IOError { .. }
            | DockerError::HyperResponseError { .. }
            | DockerError::SocketNotFoundError(_)
            | DockerError::RequestTimeoutError => BackendError::DockerUnreachable {
                reason: e.to_string(),
            },
            other => BackendError::Docker {
                op,
                name: self.name.clone(),
                reason: other.to_string(),
            },
        }
    }
}

fn status(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// `registry/app:1.2` → `cluster-registry-app-1.2`.
fn default_name(image: &str) -> String {
    let cleaned: String = image
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("cluster-{cleaned}")
}

impl Backend for DockerBackend {
    fn kind(&self) -> &'static str {
        "docker"
    }

    fn start(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.start_inner())
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.stop_inner())
    }

    fn kill(&self) -> BoxFuture<'_, Result<(), BackendError>> {
        Box::pin(self.stop_within(0))
    }

    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(self.health_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_are_valid_container_names() {
        assert_eq!(
            default_name("registry:5000/app:1.2"),
            "cluster-registry-5000-app-1.2"
        );
    }
}
