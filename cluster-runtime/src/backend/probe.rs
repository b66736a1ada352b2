//! The HTTP health probe: one plain-HTTP GET with a timeout, no client
//! library (the probe needs a status line, nothing more).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::HealthProbe;

/// Largest response head read; a health endpoint answers far less.
const MAX_RESPONSE: u64 = 64 * 1024;

/// Runs one probe: `Ok` when `GET url` answers `expect_status` within the
/// probe's timeout, else what went wrong (connection refused, timeout, the
/// status it got).
///
/// ```no_run
/// # async fn demo() {
/// use cluster_runtime::backend::{probe, HealthProbe};
/// let ok = probe(&HealthProbe::new("http://127.0.0.1:8080/health")).await.is_ok();
/// # }
/// ```
pub async fn probe(p: &HealthProbe) -> Result<(), String> {
    let (host, port, path) = parse_url(&p.url)?;
    let get = async {
        let mut stream = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("GET {}: {e}", p.url))?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("GET {}: {e}", p.url))?;
        let mut response = Vec::new();
        stream
            .take(MAX_RESPONSE)
            .read_to_end(&mut response)
            .await
            .map_err(|e| format!("GET {}: {e}", p.url))?;
        Ok::<_, String>(response)
    };
    let response = tokio::time::timeout(p.timeout, get)
        .await
        .map_err(|_| format!("GET {}: no answer within {:?}", p.url, p.timeout))??;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("GET {}: not an HTTP response", p.url))?;
    if status == p.expect_status {
        Ok(())
    } else {
        Err(format!(
            "GET {} answered {status}, expected {}",
            p.url, p.expect_status
        ))
    }
}

/// Splits `http://HOST[:PORT][/PATH]` (IPv6 hosts in brackets).
fn parse_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("probe url `{url}` must start with http://"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("probe url `{url}`: unclosed `[`"))?;
        (h, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("probe url `{url}` has no host"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("probe url `{url}`: `{p}` is not a port"))?,
        None => 80,
    };
    Ok((host.to_owned(), port, path.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_port_path() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080/health"),
            Ok(("127.0.0.1".into(), 8080, "/health".into()))
        );
        assert_eq!(
            parse_url("http://localhost"),
            Ok(("localhost".into(), 80, "/".into()))
        );
        assert_eq!(
            parse_url("http://[::1]:9/x?y=1"),
            Ok(("::1".into(), 9, "/x?y=1".into()))
        );
        assert!(parse_url("https://a/").is_err());
        assert!(parse_url("http://a:notaport/").is_err());
        assert!(parse_url("http:///x").is_err());
    }

    #[tokio::test]
    async fn a_closed_port_is_an_error_naming_the_url() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = probe(&HealthProbe::new(format!("http://127.0.0.1:{port}/health")))
            .await
            .unwrap_err();
        assert!(err.contains(&format!("127.0.0.1:{port}/health")), "{err}");
    }
}
