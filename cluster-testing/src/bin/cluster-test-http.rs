//! `cluster-test-http`: a tiny HTTP server that test suites run as a managed
//! backend (process, container, systemd unit) or behind a VIP.
//!
//! - `GET /health` answers 200 `ok` (503 with `--fail-health`);
//! - `GET /` answers 200 with `node <NODE_ID>` (or the hostname), so a test
//!   can tell which node served it;
//! - anything else answers 404;
//! - SIGTERM or SIGINT make it exit 0.
//!
//! `--listen ADDR` (default `$LISTEN`, else `127.0.0.1:8080`). Only std and
//! tokio: it links statically (`-C target-feature=+crt-static`) or runs with
//! the few libraries `ldd` lists.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};

fn usage() -> ! {
    eprintln!("usage: cluster-test-http [--listen ADDR] [--fail-health]   (ADDR default: $LISTEN or 127.0.0.1:8080)");
    std::process::exit(2);
}

fn main() {
    let mut listen = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".to_owned());
    let mut fail_health = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().unwrap_or_else(|| usage()),
            "--fail-health" => fail_health = true,
            _ => usage(),
        }
    }
    let Ok(addr) = listen.parse::<SocketAddr>() else {
        eprintln!("cluster-test-http: `{listen}` is not an IP:PORT address");
        std::process::exit(2);
    };
    let node = std::env::var("NODE_ID").ok().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "unknown".to_owned())
    });
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cluster-test-http: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(serve(addr, node, fail_health));
    std::process::exit(code);
}

async fn serve(addr: SocketAddr, node: String, fail_health: bool) -> i32 {
    let (mut term, mut int) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            eprintln!("cluster-test-http: cannot install signal handlers");
            return 1;
        }
    };
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cluster-test-http: cannot listen on {addr}: {e}");
            return 1;
        }
    };
    let local = listener.local_addr().map_or(addr, |a| a);
    println!("cluster-test-http listening on {local} as node {node}");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(answer(stream, node.clone(), fail_health));
                }
            }
            _ = term.recv() => {
                println!("cluster-test-http: SIGTERM, exiting");
                return 0;
            }
            _ = int.recv() => return 0,
        }
    }
}

async fn answer(mut stream: TcpStream, node: String, fail_health: bool) {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    // Read until the end of the request head (or the buffer is full).
    while len < buf.len() {
        match stream.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, body) = match (method, path) {
        ("GET", "/health") if fail_health => ("503 Service Unavailable", "failing".to_owned()),
        ("GET", "/health") => ("200 OK", "ok".to_owned()),
        ("GET", "/") => ("200 OK", format!("node {node}")),
        _ => ("404 Not Found", "not found".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}\n",
        body.len() + 1
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
