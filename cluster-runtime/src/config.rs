//! The configuration contract (DESIGN §5): flags, then environment, then an
//! optional TOML file (`--config`), then defaults.
//!
//! Every binary built on the platform accepts the same settings by
//! flattening [`ConfigArgs`] into its own `clap` parser. Bad configuration
//! is refused with one message naming the setting.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::naming;
use crate::placement::{self, Labels};
use crate::transport::NatsOptions;

/// Command-line flags (each with its environment variable).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// NATS server URLs, comma-separated. Without one (or with --dev) a local
    /// nats-server is started.
    #[arg(long = "nats", env = "NATS_URL", value_name = "URLS")]
    pub nats: Option<String>,
    /// Platform name ([a-z0-9-]+).
    #[arg(long, env = "CLUSTER_PLATFORM")]
    pub platform: Option<String>,
    /// This node's id (default: the hostname).
    #[arg(long = "node", env = "NODE_ID")]
    pub node: Option<String>,
    /// Node labels: `key=value,flag` (repeatable).
    #[arg(long = "label", env = "CLUSTER_LABELS", value_name = "LABELS")]
    pub labels: Vec<String>,
    /// Address of the health/ready/status HTTP endpoint (`off` disables it).
    #[arg(long, env = "CLUSTER_HEALTH_ADDR")]
    pub health_addr: Option<String>,
    /// Address of the Prometheus metrics endpoint.
    #[arg(long, env = "CLUSTER_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// NATS credentials file.
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// Directory for node-local data.
    #[arg(long, env = "CLUSTER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Start a local nats-server child (also the default when no NATS URL is set).
    #[arg(long)]
    pub dev: bool,
    /// A TOML file with the same settings (flags and environment win).
    #[arg(long = "config", env = "CLUSTER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The TOML file's shape: the same names as the flags, in snake case, plus
/// the connection options that have no flag.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    nats: Option<String>,
    platform: Option<String>,
    node: Option<String>,
    labels: Option<String>,
    health_addr: Option<String>,
    metrics_addr: Option<String>,
    nats_creds: Option<PathBuf>,
    nats_nkey: Option<String>,
    tls_required: Option<bool>,
    tls_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    dev: Option<bool>,
}

/// Resolved, validated configuration of one node.
#[derive(Debug, Clone)]
pub struct Config {
    /// How to reach NATS (empty URLs with `dev`: a local server is started).
    pub nats: NatsOptions,
    /// Platform name.
    pub platform: String,
    /// Node id.
    pub node: String,
    /// Node labels.
    pub labels: Labels,
    /// Health/status endpoint, if enabled.
    pub health_addr: Option<SocketAddr>,
    /// Metrics endpoint, if set.
    pub metrics_addr: Option<SocketAddr>,
    /// Node-local data directory.
    pub data_dir: Option<PathBuf>,
    /// Start a local nats-server.
    pub dev: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nats: NatsOptions::default(),
            platform: "default".into(),
            node: default_node_id(),
            labels: Labels::new(),
            health_addr: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            metrics_addr: None,
            data_dir: None,
            dev: false,
        }
    }
}

/// The hostname, lowercased, with characters outside `[a-z0-9-]` replaced by `-`.
pub fn default_node_id() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "node".into());
    let id: String = host
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if id.is_empty() {
        "node".into()
    } else {
        id
    }
}

fn parse_addr(setting: &str, value: &str) -> Result<Option<SocketAddr>> {
    if value.is_empty() || value == "off" {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| {
        Error::config(format!(
            "{setting}: `{value}` is not an address like 127.0.0.1:8080 (or `off`)"
        ))
    })
}

impl Config {
    /// Resolves flags/environment and the optional file into a validated
    /// configuration.
    pub fn from_args(args: &ConfigArgs) -> Result<Config> {
        let file = match &args.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::config(format!("--config {}: {e}", path.display())))?;
                toml::from_str(&text)
                    .map_err(|e| Error::config(format!("--config {}: {e}", path.display())))?
            }
        };
        let defaults = Config::default();
        let platform = args
            .platform
            .clone()
            .or(file.platform)
            .unwrap_or(defaults.platform);
        naming::validate_platform(&platform)
            .map_err(|e| Error::config(format!("--platform/CLUSTER_PLATFORM: {e}")))?;
        let node = args.node.clone().or(file.node).unwrap_or(defaults.node);
        naming::validate_node(&node).map_err(|e| Error::config(format!("--node/NODE_ID: {e}")))?;
        let label_text = if args.labels.is_empty() {
            file.labels.unwrap_or_default()
        } else {
            args.labels.join(",")
        };
        let labels = placement::parse_labels(&label_text)
            .map_err(|e| Error::config(format!("--label/CLUSTER_LABELS: {e}")))?;
        let health_addr = match args.health_addr.clone().or(file.health_addr) {
            Some(v) => parse_addr("--health-addr/CLUSTER_HEALTH_ADDR", &v)?,
            None => defaults.health_addr,
        };
        let metrics_addr = match args.metrics_addr.clone().or(file.metrics_addr) {
            Some(v) => parse_addr("--metrics-addr/CLUSTER_METRICS_ADDR", &v)?,
            None => None,
        };
        let urls: Vec<String> = args
            .nats
            .clone()
            .or(file.nats)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect();
        for url in &urls {
            url.parse::<async_nats::ServerAddr>().map_err(|e| {
                Error::config(format!("--nats/NATS_URL: `{url}` is not a NATS URL: {e}"))
            })?;
        }
        let dev = args.dev || file.dev.unwrap_or(false) || urls.is_empty();
        if args.dev && !urls.is_empty() {
            return Err(Error::config(
                "--dev starts a local nats-server; do not also give --nats/NATS_URL",
            ));
        }
        let creds = args.nats_creds.clone().or(file.nats_creds);
        if let Some(c) = &creds {
            if !c.is_file() {
                return Err(Error::config(format!(
                    "--nats-creds/NATS_CREDS: {} is not a readable file",
                    c.display()
                )));
            }
        }
        let tls_client = match (file.tls_cert, file.tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(Error::config(
                    "tls_cert and tls_key must be set together in the config file",
                ))
            }
        };
        Ok(Config {
            nats: NatsOptions {
                urls,
                creds,
                nkey: file.nats_nkey,
                tls_required: file.tls_required.unwrap_or(false),
                tls_ca: file.tls_ca,
                tls_client,
                name: Some(format!("{platform}/{node}")),
            },
            platform,
            node,
            labels,
            health_addr,
            metrics_addr,
            data_dir: args.data_dir.clone().or(file.data_dir),
            dev,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ConfigArgs {
        ConfigArgs {
            nats: Some("nats://127.0.0.1:4222".into()),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_overrides() {
        let c = Config::from_args(&args()).expect("valid");
        assert_eq!(c.platform, "default");
        assert!(!c.dev);
        assert_eq!(
            c.health_addr,
            Some(SocketAddr::from(([127, 0, 0, 1], 8080)))
        );
        let mut a = args();
        a.labels = vec!["zone=a,ssd".into()];
        a.health_addr = Some("off".into());
        let c = Config::from_args(&a).expect("valid");
        assert_eq!(c.labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(c.health_addr, None);
        let c = Config::from_args(&ConfigArgs::default()).expect("dev");
        assert!(c.dev, "no URL means dev mode");
    }

    #[test]
    fn errors_name_the_setting() {
        let mut a = args();
        a.platform = Some("Prod".into());
        assert!(Config::from_args(&a)
            .expect_err("platform")
            .to_string()
            .contains("--platform"));
        let mut a = args();
        a.node = Some("a b".into());
        assert!(Config::from_args(&a)
            .expect_err("node")
            .to_string()
            .contains("--node"));
        let mut a = args();
        a.health_addr = Some("nowhere".into());
        assert!(Config::from_args(&a)
            .expect_err("addr")
            .to_string()
            .contains("--health-addr"));
        let mut a = args();
        a.labels = vec!["a b".into()];
        assert!(Config::from_args(&a)
            .expect_err("label")
            .to_string()
            .contains("--label"));
        let mut a = args();
        a.nats_creds = Some("/nonexistent.creds".into());
        assert!(Config::from_args(&a)
            .expect_err("creds")
            .to_string()
            .contains("--nats-creds"));
    }

    #[test]
    fn file_is_read_and_flags_win() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "platform = \"prod\"\nnode = \"n9\"\nlabels = \"zone=b\"\n",
        )
        .expect("write");
        let mut a = args();
        a.config = Some(path.clone());
        a.node = Some("n1".into());
        let c = Config::from_args(&a).expect("valid");
        assert_eq!((c.platform.as_str(), c.node.as_str()), ("prod", "n1"));
        std::fs::write(&path, "platfrom = \"x\"\n").expect("write");
        assert!(Config::from_args(&a)
            .expect_err("unknown key")
            .to_string()
            .contains("--config"));
    }
}
