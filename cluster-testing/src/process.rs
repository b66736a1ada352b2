//! Child processes under test control: cluster nodes (or anything else) run
//! as separate processes, with their output captured and their life in the
//! test's hands.
//!
//! A [`ChildProcess`] owns one spawned process:
//!
//! - stdin is `/dev/null`; every stdout line is recorded (see
//!   [`lines_seen`](ChildProcess::lines_seen),
//!   [`wait_for_line`](ChildProcess::wait_for_line),
//!   [`take_lines`](ChildProcess::take_lines));
//! - stderr goes to a log file ([`stderr_log`](ChildProcess::stderr_log)),
//!   removed on drop unless the test is panicking, in which case its path is
//!   printed. With `CLUSTER_TEST_VERBOSE` set, stderr is inherited and stdout
//!   lines are echoed to the test's stderr, prefixed with `[name pid]`;
//! - faults: [`kill`](ChildProcess::kill) (`SIGKILL`, reaped),
//!   [`terminate`](ChildProcess::terminate) (`SIGTERM`),
//!   [`pause`](ChildProcess::pause) / [`resume`](ChildProcess::resume)
//!   (`SIGSTOP` / `SIGCONT`);
//! - it is killed and reaped on drop.
//!
//! Signals go to the process itself, not to processes it started.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::process::Command;
//! use std::time::Duration;
//! use cluster_testing::process::ChildProcess;
//!
//! let mut node = ChildProcess::spawn(Command::new("my-node").arg("--dev"))?;
//! node.wait_for_line(|l| l.contains("ready"), Duration::from_secs(10))
//!     .await
//!     .expect("node never said ready");
//! node.pause()?;
//! node.resume()?;
//! node.kill();
//! # Ok(())
//! # }
//! ```

use std::fs;
use std::io::{self, BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

pub use cluster_runtime::clock::monotonic_ns;

/// Set (to anything) to see children's stderr and stdout live.
pub const VERBOSE_ENV: &str = "CLUSTER_TEST_VERBOSE";

/// How often `wait_exit` checks for exit.
const EXIT_POLL: Duration = Duration::from_millis(10);

/// One spawned process. Killed and reaped on drop.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    pid: u32,
    /// Set once the process has been reaped; from then on its pid may belong
    /// to another process and is never signalled.
    exit: Option<ExitStatus>,
    lines: Arc<Mutex<Vec<String>>>,
    /// Number of stdout lines seen; closed when stdout reaches EOF.
    line_count: watch::Receiver<usize>,
    line_rx: Option<mpsc::UnboundedReceiver<String>>,
    stderr_log: Option<tempfile::TempPath>,
}

impl ChildProcess {
    /// Spawns `cmd` with stdin null, stdout captured line by line, stderr to
    /// a log file (or inherited with `CLUSTER_TEST_VERBOSE`). The command's
    /// program, arguments, environment and working directory are kept; its
    /// stdio settings are replaced.
    pub fn spawn(cmd: &mut Command) -> io::Result<ChildProcess> {
        let name = Path::new(cmd.get_program())
            .file_name()
            .map_or_else(|| "child".to_string(), |n| n.to_string_lossy().into_owned());
        let verbose = std::env::var_os(VERBOSE_ENV).is_some();

        let stderr_log = if verbose {
            cmd.stderr(Stdio::inherit());
            None
        } else {
            let (file, path) = tempfile::Builder::new()
                .prefix(&format!("{name}-"))
                .suffix(".stderr.log")
                .tempfile()?
                .into_parts();
            cmd.stderr(Stdio::from(file));
            Some(path)
        };
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).spawn()?;
        let pid = child.id();
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("child stdout was not captured"))?;

        let lines = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, line_count) = watch::channel(0);
        let (line_tx, line_rx) = mpsc::unbounded_channel();
        let echo = verbose.then(|| format!("[{name} {pid}]"));
        let reader = LineReader {
            stdout,
            lines: Arc::clone(&lines),
            count_tx,
            line_tx,
            echo,
        };
        if let Err(e) = std::thread::Builder::new()
            .name(format!("{name}-{pid}-stdout"))
            .spawn(move || reader.run())
        {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }

        Ok(ChildProcess {
            name,
            child,
            pid,
            exit: None,
            lines,
            line_count,
            line_rx: Some(line_rx),
            stderr_log,
        })
    }

    /// The program's file name, used in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The stderr log file (`None` in verbose mode, where stderr is
    /// inherited).
    pub fn stderr_log(&self) -> Option<&Path> {
        self.stderr_log.as_deref()
    }

    /// The stderr log's contents so far (empty in verbose mode), e.g. for a
    /// failing assertion's message.
    pub fn stderr_text(&self) -> String {
        self.stderr_log
            .as_deref()
            .and_then(|p| fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Every stdout line received so far, in order.
    pub fn lines_seen(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The stream of stdout lines, each delivered once; `None` after the
    /// first call. It ends when the process closes its stdout.
    pub fn take_lines(&mut self) -> Option<mpsc::UnboundedReceiver<String>> {
        self.line_rx.take()
    }

    /// Waits until a stdout line (any since the start, not only new ones)
    /// satisfies `pred` and returns it; `None` on timeout or when stdout
    /// closes without one.
    pub async fn wait_for_line(
        &self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut count = self.line_count.clone();
        let mut checked = 0;
        loop {
            // Mark the current count seen before reading, so a line arriving
            // after the scan wakes `changed()`.
            count.borrow_and_update();
            {
                let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(found) = lines[checked..].iter().find(|l| pred(l)) {
                    return Some(found.clone());
                }
                checked = lines.len();
            }
            match tokio::time::timeout_at(deadline, count.changed()).await {
                Ok(Ok(())) => {}
                // Stdout closed: one last scan for lines that raced the close.
                Ok(Err(_)) => {
                    let lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
                    return lines[checked..].iter().find(|l| pred(l)).cloned();
                }
                Err(_) => return None,
            }
        }
    }

    /// Kills the process with `SIGKILL` (a paused one too) and reaps it.
    /// Does nothing if it has already been reaped.
    pub fn kill(&mut self) {
        if self.exit.is_some() {
            return;
        }
        // An error means it has already exited; wait() reaps it either way.
        let _ = self.child.kill();
        if let Ok(status) = self.child.wait() {
            self.exit = Some(status);
        }
    }

    /// Asks the process to stop with `SIGTERM`; see
    /// [`wait_exit`](Self::wait_exit).
    pub fn terminate(&self) -> io::Result<()> {
        self.signal(Signal::SIGTERM)
    }

    /// Freezes the process with `SIGSTOP`: it keeps its connections but does
    /// nothing, like a hung host.
    pub fn pause(&self) -> io::Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// Resumes a paused process with `SIGCONT`.
    pub fn resume(&self) -> io::Result<()> {
        self.signal(Signal::SIGCONT)
    }

    fn signal(&self, sig: Signal) -> io::Result<()> {
        if self.exit.is_some() {
            return Err(io::Error::other(format!(
                "cannot send {sig} to {} (pid {}): it has exited",
                self.name, self.pid
            )));
        }
        let pid = i32::try_from(self.pid).map_err(io::Error::other)?;
        signal::kill(Pid::from_raw(pid), sig).map_err(io::Error::from)
    }

    /// Waits up to `timeout` for the process to exit and reaps it; `None` if
    /// it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_reap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    /// Whether the process has not exited (a paused process is running).
    pub fn is_running(&mut self) -> bool {
        self.try_reap().is_none()
    }

    /// How the process exited, if it has been reaped.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit
    }

    fn try_reap(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            if let Some(log) = self.stderr_log.take() {
                if let Ok(path) = log.keep() {
                    eprintln!(
                        "{} (pid {}) stderr kept in {}",
                        self.name,
                        self.pid,
                        path.display()
                    );
                }
            }
        }
    }
}

/// Reads the child's stdout on a thread of its own until EOF.
struct LineReader {
    stdout: ChildStdout,
    lines: Arc<Mutex<Vec<String>>>,
    count_tx: watch::Sender<usize>,
    line_tx: mpsc::UnboundedSender<String>,
    echo: Option<String>,
}

impl LineReader {
    fn run(self) {
        let reader = BufReader::new(self.stdout);
        for raw in reader.split(b'\n') {
            let Ok(raw) = raw else { break };
            let line = String::from_utf8_lossy(&raw)
                .trim_end_matches('\r')
                .to_string();
            if let Some(prefix) = &self.echo {
                eprintln!("{prefix} {line}");
            }
            let count = {
                let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
                lines.push(line.clone());
                lines.len()
            };
            // Nobody listening is fine: the lines are kept in `lines` too.
            let _ = self.line_tx.send(line);
            self.count_tx.send_replace(count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant as StdInstant;

    fn sh(script: &str) -> ChildProcess {
        ChildProcess::spawn(Command::new("sh").args(["-c", script])).expect("spawn sh")
    }

    fn pid_alive(pid: u32) -> bool {
        Path::new(&format!("/proc/{pid}")).exists()
    }

    /// Polls the state letter of `/proc/PID/stat` (signals are delivered
    /// asynchronously) until `ok` accepts it, for up to 5 s.
    async fn wait_for_state(pid: u32, ok: impl Fn(char) -> bool) {
        let deadline = StdInstant::now() + Duration::from_secs(5);
        loop {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
                .expect("state");
            if ok(state) {
                return;
            }
            assert!(
                StdInstant::now() < deadline,
                "pid {pid} stuck in state {state}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn reads_lines_pauses_resumes_and_kills() {
        let mut p = sh("echo a; echo b; exec sleep 30");
        let mut rx = p.take_lines().expect("first take");
        assert!(p.take_lines().is_none());
        assert_eq!(rx.recv().await.as_deref(), Some("a"));
        assert_eq!(rx.recv().await.as_deref(), Some("b"));
        assert_eq!(
            p.wait_for_line(|l| l == "a", Duration::from_secs(5)).await,
            Some("a".into())
        );
        assert_eq!(p.lines_seen(), ["a", "b"]);
        assert!(p.is_running());

        p.pause().expect("pause");
        wait_for_state(p.pid(), |s| s == 'T').await;
        assert!(p.is_running(), "a paused process is still running");
        p.resume().expect("resume");
        wait_for_state(p.pid(), |s| s != 'T').await;

        p.pause().expect("pause again");
        p.kill(); // SIGKILL works on a stopped process
        p.kill(); // idempotent
        assert!(!pid_alive(p.pid()));
        assert!(!p.is_running());
        assert!(p.exit_status().is_some());
        assert!(p.pause().is_err(), "no signals after reaping");
        assert_eq!(rx.recv().await, None, "stdout stream ends");
    }

    #[tokio::test]
    async fn wait_for_line_sees_later_lines_and_times_out() {
        let p = sh("echo one; sleep 0.2; echo two; exec sleep 30");
        let t = StdInstant::now();
        let got = p
            .wait_for_line(|l| l == "two", Duration::from_secs(10))
            .await;
        assert_eq!(got.as_deref(), Some("two"));
        assert!(t.elapsed() >= Duration::from_millis(150));
        let none = p
            .wait_for_line(|l| l == "three", Duration::from_millis(100))
            .await;
        assert_eq!(none, None);
    }

    #[tokio::test]
    async fn wait_for_line_returns_when_stdout_closes() {
        let p = sh("echo only");
        let t = StdInstant::now();
        let got = p
            .wait_for_line(|l| l == "never", Duration::from_secs(10))
            .await;
        assert_eq!(got, None);
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn terminate_and_wait_exit() {
        let mut p = sh("exec sleep 30");
        assert_eq!(p.wait_exit(Duration::from_millis(50)).await, None);
        p.terminate().expect("terminate");
        let status = p
            .wait_exit(Duration::from_secs(5))
            .await
            .expect("exits on SIGTERM");
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(Signal::SIGTERM as i32));
        assert!(!p.is_running());
    }

    #[tokio::test]
    async fn stderr_goes_to_a_log_removed_on_drop() {
        if std::env::var_os(VERBOSE_ENV).is_some() {
            return; // stderr is inherited in verbose mode
        }
        let mut p = sh("echo oops >&2; echo done");
        p.wait_for_line(|l| l == "done", Duration::from_secs(5))
            .await
            .expect("done");
        p.wait_exit(Duration::from_secs(5)).await.expect("exits");
        let log = p.stderr_log().expect("log").to_path_buf();
        assert_eq!(p.stderr_text(), "oops\n");
        drop(p);
        assert!(!log.exists());
    }

    #[tokio::test]
    async fn drop_kills() {
        let p = sh("exec sleep 30");
        let pid = p.pid();
        assert!(pid_alive(pid));
        drop(p);
        assert!(!pid_alive(pid));
    }
}
