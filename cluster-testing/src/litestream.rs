//! Stock Litestream (0.5.17) against a NATS object-store bucket: write its
//! YAML config with a `type: nats` replica, run `litestream replicate`, and
//! run `litestream restore`. Used to prove that what our replicator writes
//! restores with stock tools, and as the benchmark baseline.
//!
//! Litestream does not create the bucket: create it first (e.g. with
//! `WalBucket::open_or_create`).
//!
//! ```no_run
//! use cluster_testing::litestream::{Litestream, LitestreamConfig};
//! # fn demo() -> std::io::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let config = LitestreamConfig::new("/data/app.db", "nats://127.0.0.1:4222", "prod_app_wal");
//! let ls = Litestream::new(dir.path(), config)?;
//! ls.restore(&dir.path().join("restored.db"))?;
//! # Ok(()) }
//! ```

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Litestream binary: `$LITESTREAM_BIN`, else `.tools/bin/litestream`
/// in the current directory or one of its parents (where
/// `scripts/lib/tools.sh` installs it).
pub fn litestream_bin() -> io::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("LITESTREAM_BIN") {
        let bin = PathBuf::from(bin);
        if bin.is_file() {
            return Ok(bin);
        }
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("LITESTREAM_BIN={} does not exist", bin.display()),
        ));
    }
    let starts = [
        std::env::current_dir().ok(),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR"))),
    ];
    for start in starts.into_iter().flatten() {
        let mut dir = Some(start.as_path());
        while let Some(d) = dir {
            let bin = d.join(".tools/bin/litestream");
            if bin.is_file() {
                return Ok(bin);
            }
            dir = d.parent();
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "litestream not found: set LITESTREAM_BIN or run \
         `source scripts/lib/tools.sh && ensure_litestream`",
    ))
}

/// One database replicated to one NATS bucket.
#[derive(Debug, Clone)]
pub struct LitestreamConfig {
    /// The database file (absolute, as Litestream keys restores by it).
    pub db_path: PathBuf,
    /// `nats://host:port`.
    pub url: String,
    /// The object-store bucket (must exist).
    pub bucket: String,
    /// `monitor-interval` of the db (Litestream default 1 s).
    pub monitor_interval: Option<Duration>,
    /// `sync-interval` of the replica (Litestream default 1 s).
    pub sync_interval: Option<Duration>,
}

impl LitestreamConfig {
    /// Litestream's defaults for everything else.
    pub fn new(db_path: impl Into<PathBuf>, url: &str, bucket: &str) -> Self {
        LitestreamConfig {
            db_path: db_path.into(),
            url: url.to_owned(),
            bucket: bucket.to_owned(),
            monitor_interval: None,
            sync_interval: None,
        }
    }

    /// The YAML `litestream -config` reads. Litestream 0.5.17 takes the
    /// bucket from the URL's path (a bare `url` makes it look for bucket
    /// `.`), so the URL carries it and `bucket` repeats it.
    pub fn to_yaml(&self) -> String {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let mut y = format!("dbs:\n  - path: {}\n", self.db_path.display());
        if let Some(d) = self.monitor_interval {
            y.push_str(&format!("    monitor-interval: {}\n", ms(d)));
        }
        y.push_str(&format!(
            "    replica:\n      type: nats\n      url: {}/{}\n      bucket: {}\n",
            self.url.trim_end_matches('/'),
            self.bucket,
            self.bucket
        ));
        if let Some(d) = self.sync_interval {
            y.push_str(&format!("      sync-interval: {}\n", ms(d)));
        }
        y
    }
}

/// A written config and the commands that use it.
#[derive(Debug)]
pub struct Litestream {
    bin: PathBuf,
    config_path: PathBuf,
    config: LitestreamConfig,
}

impl Litestream {
    /// Writes `litestream.yml` into `dir`.
    pub fn new(dir: &Path, config: LitestreamConfig) -> io::Result<Self> {
        let config_path = dir.join("litestream.yml");
        std::fs::write(&config_path, config.to_yaml())?;
        Ok(Litestream {
            bin: litestream_bin()?,
            config_path,
            config,
        })
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Spawns `litestream replicate -config F`; its output goes to
    /// `replicate.log` beside the config. Stopped (SIGTERM, then SIGKILL)
    /// when the handle is dropped.
    pub fn replicate(&self) -> io::Result<Replicating> {
        let log_path = self.config_path.with_file_name("replicate.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(&self.bin)
            .arg("replicate")
            .arg("-config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        Ok(Replicating {
            child: Some(child),
            log_path,
        })
    }

    /// `litestream restore -config F -o OUT DB`; an error carries its output.
    pub fn restore(&self, out: &Path) -> io::Result<()> {
        self.restore_with(out, &[])
    }

    /// [`restore`](Self::restore) with extra arguments (e.g. `-txid`).
    pub fn restore_with(&self, out: &Path, extra: &[&str]) -> io::Result<()> {
        let output = Command::new(&self.bin)
            .arg("restore")
            .arg("-config")
            .arg(&self.config_path)
            .arg("-o")
            .arg(out)
            .args(extra)
            .arg(&self.config.db_path)
            .output()?;
        if output.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "litestream restore failed ({}):\n{}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )))
        }
    }
}

/// A running `litestream replicate`.
#[derive(Debug)]
pub struct Replicating {
    child: Option<Child>,
    log_path: PathBuf,
}

impl Replicating {
    /// Its output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGTERM, wait up to 15 s, then SIGKILL. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Replicating {
    fn drop(&mut self) {
        self.stop();
    }
}
