//! NATS micro protocol visibility (`nats micro ls|info|stats`).
//!
//! async-nats's `service` API subscribes each endpoint once, always with a
//! queue group, and cannot drop or re-add endpoints; our subscriptions follow
//! roles (plain when active, queue group in a pool, per partition in a ring).
//! So each [`RpcServer`](super::RpcServer) answers the `$SRV` PING, INFO and
//! STATS requests itself, in the `io.nats.micro.v1` schemas: one service
//! named after the app, one instance per server, one endpoint per method.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Counters of one method, updated by the server on every reply.
#[derive(Debug, Default)]
pub(crate) struct MethodStats {
    requests: AtomicU64,
    errors: AtomicU64,
    processing_nanos: AtomicU64,
    last_error: Mutex<String>,
}

impl MethodStats {
    pub(crate) fn record(&self, elapsed: Duration, error: Option<&str>) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.processing_nanos.fetch_add(nanos, Ordering::Relaxed);
        if let Some(error) = error {
            self.errors.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut last) = self.last_error.lock() {
                error.clone_into(&mut last);
            }
        }
    }
}

/// Per-method counters of one server. The method set is fixed at start.
#[derive(Debug)]
pub(crate) struct ServiceStats {
    started: SystemTime,
    methods: HashMap<String, MethodStats>,
}

impl ServiceStats {
    pub(crate) fn new<'a>(methods: impl Iterator<Item = &'a str>) -> Self {
        ServiceStats {
            started: SystemTime::now(),
            methods: methods
                .map(|m| (m.to_owned(), MethodStats::default()))
                .collect(),
        }
    }

    pub(crate) fn method(&self, method: &str) -> Option<&MethodStats> {
        self.methods.get(method)
    }
}

/// What a server describes about itself in INFO and STATS.
#[derive(Debug, Clone)]
pub(crate) struct Description {
    pub name: String,
    pub id: String,
    pub version: String,
    pub description: String,
    pub metadata: BTreeMap<String, String>,
    /// One per method, sorted by name.
    pub endpoints: Vec<EndpointDescription>,
}

#[derive(Debug, Clone)]
pub(crate) struct EndpointDescription {
    pub name: String,
    pub subject: String,
    pub queue_group: String,
    pub metadata: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct Ping<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    id: &'a str,
    version: &'a str,
    metadata: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct InfoEndpoint<'a> {
    name: &'a str,
    subject: &'a str,
    queue_group: &'a str,
    metadata: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct Info<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    id: &'a str,
    version: &'a str,
    description: &'a str,
    metadata: &'a BTreeMap<String, String>,
    endpoints: Vec<InfoEndpoint<'a>>,
}

#[derive(Serialize)]
struct StatsEndpoint<'a> {
    name: &'a str,
    subject: &'a str,
    queue_group: &'a str,
    num_requests: u64,
    num_errors: u64,
    last_error: String,
    processing_time: u64,
    average_processing_time: u64,
}

#[derive(Serialize)]
struct Stats<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    id: &'a str,
    version: &'a str,
    started: String,
    metadata: &'a BTreeMap<String, String>,
    endpoints: Vec<StatsEndpoint<'a>>,
}

/// The reply to a `$SRV.<verb>...` request, or `None` for an unknown verb.
pub(crate) fn answer(
    verb: &str,
    desc: &Description,
    stats: &ServiceStats,
) -> Option<Result<Vec<u8>, serde_json::Error>> {
    let reply = match verb {
        "PING" => serde_json::to_vec(&Ping {
            kind: "io.nats.micro.v1.ping_response",
            name: &desc.name,
            id: &desc.id,
            version: &desc.version,
            metadata: &desc.metadata,
        }),
        "INFO" => serde_json::to_vec(&Info {
            kind: "io.nats.micro.v1.info_response",
            name: &desc.name,
            id: &desc.id,
            version: &desc.version,
            description: &desc.description,
            metadata: &desc.metadata,
            endpoints: desc
                .endpoints
                .iter()
                .map(|e| InfoEndpoint {
                    name: &e.name,
                    subject: &e.subject,
                    queue_group: &e.queue_group,
                    metadata: &e.metadata,
                })
                .collect(),
        }),
        "STATS" => serde_json::to_vec(&Stats {
            kind: "io.nats.micro.v1.stats_response",
            name: &desc.name,
            id: &desc.id,
            version: &desc.version,
            started: rfc3339(stats.started),
            metadata: &desc.metadata,
            endpoints: desc
                .endpoints
                .iter()
                .map(|e| {
                    let m = stats.method(&e.name);
                    let requests = m.map_or(0, |m| m.requests.load(Ordering::Relaxed));
                    let nanos = m.map_or(0, |m| m.processing_nanos.load(Ordering::Relaxed));
                    StatsEndpoint {
                        name: &e.name,
                        subject: &e.subject,
                        queue_group: &e.queue_group,
                        num_requests: requests,
                        num_errors: m.map_or(0, |m| m.errors.load(Ordering::Relaxed)),
                        last_error: m
                            .and_then(|m| m.last_error.lock().ok().map(|s| s.clone()))
                            .unwrap_or_default(),
                        processing_time: nanos,
                        average_processing_time: nanos.checked_div(requests).unwrap_or(0),
                    }
                })
                .collect(),
        }),
        _ => return None,
    };
    Some(reply)
}

/// `time` as RFC 3339 UTC with nanoseconds (`2024-05-01T12:00:00.000000001Z`).
fn rfc3339(time: SystemTime) -> String {
    let d = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000000Z");
        let t = UNIX_EPOCH + Duration::new(1_709_210_096, 5);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.000000005Z");
    }

    #[test]
    fn stats_count_requests_and_errors() {
        let stats = ServiceStats::new(["a", "b"].into_iter());
        let a = stats.method("a").expect("a");
        a.record(Duration::from_micros(10), None);
        a.record(Duration::from_micros(30), Some("handler: boom"));
        let desc = Description {
            name: "app".into(),
            id: "id".into(),
            version: "0.1.0".into(),
            description: String::new(),
            metadata: BTreeMap::new(),
            endpoints: vec![EndpointDescription {
                name: "a".into(),
                subject: "p._.api.app.a".into(),
                queue_group: "app".into(),
                metadata: BTreeMap::new(),
            }],
        };
        let json = answer("STATS", &desc, &stats).expect("verb").expect("json");
        let v: serde_json::Value = serde_json::from_slice(&json).expect("parse");
        let e = &v["endpoints"][0];
        assert_eq!(e["num_requests"], 2);
        assert_eq!(e["num_errors"], 1);
        assert_eq!(e["last_error"], "handler: boom");
        assert_eq!(e["average_processing_time"], 20_000);
        assert!(answer("NOPE", &desc, &stats).is_none());
    }
}
