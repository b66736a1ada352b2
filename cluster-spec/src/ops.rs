//! The data and ops options of an app: `sqlite`, `vip`, `backend` and
//! exposed `services`.

use std::fmt;
use std::net::IpAddr;

/// Checks a replicated SQLite database path: not empty, no NUL byte, and
/// naming a file (not ending in `/`).
pub fn check_sqlite_path(path: &str) -> Result<(), String> {
    if path.trim().is_empty() {
        return Err("sqlite path must not be empty, e.g. \"/var/lib/myapp/data.db\"".into());
    }
    if path.contains('\0') {
        return Err("sqlite path must not contain a NUL byte".into());
    }
    if path.ends_with('/') {
        return Err(format!(
            "sqlite path `{path}` names a directory; name the database file, e.g. \"{path}data.db\""
        ));
    }
    Ok(())
}

/// A virtual IP: `"CIDR dev IFACE"`, e.g. `"192.168.1.100/24 dev eth0"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    /// The address to add.
    pub addr: IpAddr,
    /// The prefix length (≤ 32 for IPv4, ≤ 128 for IPv6).
    pub prefix: u8,
    /// The network interface.
    pub dev: String,
}

const VIP_FORM: &str = "\"CIDR dev IFACE\", e.g. \"192.168.1.100/24 dev eth0\"";

impl Vip {
    /// Parses `"ADDR/PREFIX dev IFACE"`.
    ///
    /// ```
    /// use cluster_spec::ops::Vip;
    /// let vip = Vip::parse("192.168.1.100/24 dev eth0").unwrap();
    /// assert_eq!((vip.prefix, vip.dev.as_str()), (24, "eth0"));
    /// assert!(Vip::parse("192.168.1.100 dev eth0").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Vip, String> {
        let parts: Vec<&str> = s.split_whitespace().collect();
        let [cidr, dev_kw, dev] = parts[..] else {
            return Err(format!("vip `{s}` is not {VIP_FORM}"));
        };
        if dev_kw != "dev" {
            return Err(format!(
                "vip `{s}` is not {VIP_FORM} (expected `dev` after the address)"
            ));
        }
        let (addr, prefix) = cidr.split_once('/').ok_or_else(|| {
            format!("vip address `{cidr}` needs a prefix length, e.g. \"{cidr}/24\"")
        })?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("vip address `{addr}` is not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix.parse().ok().filter(|p| *p <= max).ok_or_else(|| {
            format!("vip prefix `/{prefix}` must be a number between 0 and {max}")
        })?;
        check_interface(dev)?;
        Ok(Vip {
            addr,
            prefix,
            dev: dev.to_owned(),
        })
    }
}

impl fmt::Display for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} dev {}", self.addr, self.prefix, self.dev)
    }
}

/// Checks a Linux interface name (1–15 bytes, no `/`, `:` or whitespace,
/// not `.` or `..`).
fn check_interface(dev: &str) -> Result<(), String> {
    let ok = !dev.is_empty()
        && dev.len() <= 15
        && dev != "."
        && dev != ".."
        && !dev
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "vip interface `{dev}` is not an interface name (1–15 characters, no `/`, `:` or spaces)"
        ))
    }
}

/// A managed backend process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// `systemd:UNIT`: a systemd unit started and stopped with the active role.
    Systemd {
        /// The unit (`.service` is implied when no suffix is given).
        unit: String,
    },
    /// `process:CMD ARGS...`: a child process (arguments split on whitespace,
    /// no shell quoting).
    Process {
        /// The program.
        program: String,
        /// Its arguments.
        args: Vec<String>,
    },
    /// `docker:IMAGE`: a container run from the image.
    Docker {
        /// The image reference.
        image: String,
    },
}

/// The backend kinds, for error messages.
pub const BACKENDS: &str = "systemd:UNIT, process:CMD ..., docker:IMAGE";

impl Backend {
    /// Parses `systemd:UNIT`, `process:CMD ARGS...` or `docker:IMAGE`.
    ///
    /// ```
    /// use cluster_spec::ops::Backend;
    /// assert!(matches!(Backend::parse("systemd:myapp"), Ok(Backend::Systemd { .. })));
    /// assert!(Backend::parse("myapp").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Backend, String> {
        let (kind, rest) = s
            .split_once(':')
            .ok_or_else(|| format!("backend `{s}` has no kind; allowed: {BACKENDS}"))?;
        let rest = rest.trim();
        match kind.trim() {
            "systemd" => {
                let ok = !rest.is_empty()
                    && rest.bytes().all(|b| {
                        b.is_ascii_alphanumeric()
                            || matches!(b, b':' | b'_' | b'.' | b'@' | b'-' | b'\\')
                    });
                if !ok {
                    return Err(format!(
                        "backend `{s}`: `{rest}` is not a systemd unit name (letters, digits and `:_.@-\\`)"
                    ));
                }
                Ok(Backend::Systemd {
                    unit: rest.to_owned(),
                })
            }
            "process" => {
                let mut words = rest.split_whitespace().map(str::to_owned);
                let program = words.next().ok_or_else(|| {
                    format!(
                        "backend `{s}` names no command, e.g. \"process:/usr/bin/myapp --serve\""
                    )
                })?;
                Ok(Backend::Process {
                    program,
                    args: words.collect(),
                })
            }
            "docker" => {
                if rest.is_empty() || rest.bytes().any(|b| b.is_ascii_whitespace()) {
                    return Err(format!(
                        "backend `{s}` needs one image reference without spaces, e.g. \"docker:nginx:1.27\""
                    ));
                }
                Ok(Backend::Docker {
                    image: rest.to_owned(),
                })
            }
            other => Err(format!(
                "unknown backend kind `{other}`; allowed: {BACKENDS}"
            )),
        }
    }
}

/// The protocols a service may declare.
pub const PROTOCOLS: &[&str] = &["http", "https", "tcp", "udp", "grpc", "ws", "wss"];

/// Protocols whose services may have a `path`.
pub const PATH_PROTOCOLS: &[&str] = &["http", "https", "grpc", "ws", "wss"];

/// Checks a service name: `[a-z0-9-]+` (it is part of a KV key).
pub fn check_service_name(name: &str) -> Result<(), String> {
    if crate::naming::is_token(name) {
        Ok(())
    } else {
        Err(format!(
            "service name `{name}` is invalid: use only lowercase letters, digits and `-` ([a-z0-9-]+)"
        ))
    }
}

/// Checks a service port (1–65535).
pub fn check_port(port: u64) -> Result<u16, String> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {port} must be between 1 and 65535"))
}

/// Checks a service protocol.
pub fn check_protocol(protocol: &str) -> Result<(), String> {
    if PROTOCOLS.contains(&protocol) {
        Ok(())
    } else {
        Err(format!(
            "unknown protocol `{protocol}`; allowed: {}",
            PROTOCOLS.join(", ")
        ))
    }
}

/// Checks a service path: it starts with `/` and the protocol has paths.
pub fn check_service_path(protocol: &str, path: &str) -> Result<(), String> {
    if !PATH_PROTOCOLS.contains(&protocol) {
        return Err(format!(
            "a `{protocol}` service has no path; paths are for {}",
            PATH_PROTOCOLS.join(", ")
        ));
    }
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err(format!(
            "service path `{path}` must start with `/` and contain no spaces"
        ));
    }
    Ok(())
}

/// Checks a service tag or metadata key: not empty, no whitespace or `,`.
pub fn check_tag(what: &str, tag: &str) -> Result<(), String> {
    if tag.is_empty() || tag.bytes().any(|b| b.is_ascii_whitespace() || b == b',') {
        Err(format!(
            "{what} `{tag}` must be non-empty without spaces or `,`"
        ))
    } else {
        Ok(())
    }
}

/// Checks a load-balancing weight (1–100).
pub fn check_weight(weight: u64) -> Result<u32, String> {
    u32::try_from(weight)
        .ok()
        .filter(|w| (1..=100).contains(w))
        .ok_or_else(|| format!("weight {weight} must be between 1 and 100"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite() {
        assert!(check_sqlite_path("/var/lib/myapp/data.db").is_ok());
        assert!(check_sqlite_path("data.db").is_ok());
        assert!(check_sqlite_path("").is_err());
        assert!(check_sqlite_path("/var/lib/").is_err());
    }

    #[test]
    fn vip() {
        let v = Vip::parse("192.168.1.100/24 dev eth0").expect("v4");
        assert_eq!(v.to_string(), "192.168.1.100/24 dev eth0");
        assert!(Vip::parse("fd00::10/64 dev br0").is_ok());
        assert!(Vip::parse("192.168.1.100/33 dev eth0").is_err());
        assert!(Vip::parse("192.168.1.100/24").is_err());
        assert!(Vip::parse("192.168.1.100/24 on eth0").is_err());
        assert!(Vip::parse("192.168.1.300/24 dev eth0").is_err());
        assert!(Vip::parse("192.168.1.1/24 dev averyveryverylongname").is_err());
    }

    #[test]
    fn backend() {
        assert_eq!(
            Backend::parse("systemd:myapp-backend"),
            Ok(Backend::Systemd {
                unit: "myapp-backend".into()
            })
        );
        assert_eq!(
            Backend::parse("process:/usr/bin/app --port 80"),
            Ok(Backend::Process {
                program: "/usr/bin/app".into(),
                args: vec!["--port".into(), "80".into()]
            })
        );
        assert!(Backend::parse("docker:nginx:1.27").is_ok());
        assert!(Backend::parse("process:").is_err());
        assert!(Backend::parse("systemd:my unit").is_err());
        assert!(Backend::parse("k8s:pod")
            .expect_err("kind")
            .contains("allowed"));
        assert!(Backend::parse("myapp").is_err());
    }

    #[test]
    fn services() {
        assert!(check_service_name("postgres-wire").is_ok());
        assert!(check_service_name("http_api").is_err());
        assert_eq!(check_port(8080), Ok(8080));
        assert!(check_port(0).is_err());
        assert!(check_port(70000).is_err());
        assert!(check_protocol("grpc").is_ok());
        assert!(check_protocol("smtp").is_err());
        assert!(check_service_path("http", "/health").is_ok());
        assert!(check_service_path("tcp", "/x").is_err());
        assert!(check_service_path("http", "health").is_err());
        assert!(check_weight(0).is_err());
        assert!(check_tag("tag", "a b").is_err());
    }
}
