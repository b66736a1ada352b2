//! The validated options of an app struct.

use std::time::Duration;

use cluster_spec::Mode;
use proc_macro2::Ident;

/// Everything `#[cluster::app(...)]` said about an app, checked.
pub struct AppModel {
    /// The struct.
    pub ident: Ident,
    /// The wire name.
    pub name: String,
    pub mode: Mode,
    pub placement: Option<String>,
    pub lease_ttl: Option<Duration>,
    pub hook_timeout: Option<Duration>,
    pub sqlite: Option<String>,
    pub vip: Option<String>,
    pub backend: Option<String>,
    pub services: Vec<ServiceModel>,
}

/// One `services(...)` entry.
pub struct ServiceModel {
    pub name: String,
    pub port: u16,
    pub protocol: String,
    pub path: Option<String>,
    pub tags: Vec<String>,
    pub metadata: Vec<(String, String)>,
    pub internal: bool,
    pub weight: Option<u32>,
}
