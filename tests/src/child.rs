//! Processes that a test starts and that never outlive it.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::wait::Timeout;

/// How long a process may take to exit on SIGTERM before it gets SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);
/// How long short commands run through [`run`] may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(20);

/// A spawned process, sent SIGTERM (then SIGKILL after a bound) and reaped when dropped. Its stdout and stderr are
/// collected line by line, in arrival order, and printed if the test fails while the process is alive.
pub struct Child {
    name: String,
    process: std::process::Child,
    status: Option<ExitStatus>,
    output: Arc<Captured>,
    readers: Vec<JoinHandle<()>>,
}

#[derive(Default)]
struct Captured {
    state: Mutex<CapturedState>,
    changed: Condvar,
}

#[derive(Default)]
struct CapturedState {
    lines: Vec<String>,
    open_streams: usize,
}

impl Captured {
    fn lock(&self) -> MutexGuard<'_, CapturedState> {
        // A reader thread only pushes strings; a poisoned lock still holds consistent lines.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Child {
    /// Spawns `command` with stdin closed and its output captured. `name` labels the output in failure messages.
    pub fn spawn(name: impl Into<String>, command: &mut Command) -> Child {
        let name = name.into();
        let mut process = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot spawn {name} ({command:?}): {err}"));
        let output = Arc::new(Captured::default());
        let mut readers = Vec::new();
        let stdout = process.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>);
        let stderr = process.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>);
        for stream in [stdout, stderr].into_iter().flatten() {
            output.lock().open_streams += 1;
            let output = Arc::clone(&output);
            readers.push(std::thread::spawn(move || read_lines(stream, &output)));
        }
        Child {
            name,
            process,
            status: None,
            output,
            readers,
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Everything the process printed so far, one line per line.
    pub fn output(&self) -> String {
        self.output
            .lock()
            .lines
            .iter()
            .map(|line| format!("{line}\n"))
            .collect()
    }

    /// Waits for a line of output that contains `pattern` and returns it; fails early if the process closes its
    /// output without printing one.
    pub fn wait_for_line(&self, pattern: &str, timeout: Duration) -> Result<String, Timeout> {
        self.wait_for(&format!("a line containing {pattern:?}"), timeout, |line| {
            line.contains(pattern)
        })
    }

    /// Waits for a line of output that satisfies `matches` and returns it.
    pub fn wait_for(&self, what: &str, timeout: Duration, matches: impl Fn(&str) -> bool) -> Result<String, Timeout> {
        let deadline = Instant::now() + timeout;
        let mut state = self.output.lock();
        loop {
            if let Some(line) = state.lines.iter().find(|line| matches(line)) {
                return Ok(line.clone());
            }
            let now = Instant::now();
            if state.open_streams == 0 || now >= deadline {
                let what = if state.open_streams == 0 {
                    format!("{what} (output closed)")
                } else {
                    what.to_owned()
                };
                drop(state);
                return Err(self.timeout(&what, timeout));
            }
            state = self
                .output
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, Timeout> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(self.timeout("the process to exit", timeout));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` to the process unless it has already exited.
    pub fn signal(&mut self, signal: Signal) {
        if self.try_wait().is_none() {
            // The process is our unreaped child, so its pid cannot have been reused.
            let _ = kill(Pid::from_raw(self.pid() as i32), signal);
        }
    }

    /// Stops the process: SIGTERM, then SIGKILL if it is still running after a few seconds. Returns how it ended.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(Signal::SIGTERM);
        if let Ok(status) = self.wait_exit(TERM_GRACE) {
            return status;
        }
        self.signal(Signal::SIGKILL);
        // SIGKILL cannot be refused; the wait only returns once the kernel has torn the process down.
        let status = self.process.wait().expect("waiting for a killed child");
        self.status = Some(status);
        status
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.process.try_wait().expect("polling a child process");
        }
        self.status
    }

    fn timeout(&self, what: &str, after: Duration) -> Timeout {
        Timeout::new(format!("{what} from {}", self.name), after, Some(self.output()))
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.terminate();
        // The pipes close with the process, unless it left children holding them: do not wait long for those.
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut state = self.output.lock();
        while state.open_streams > 0 && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            state = self
                .output
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let closed = state.open_streams == 0;
        drop(state);
        if closed {
            for reader in std::mem::take(&mut self.readers) {
                let _ = reader.join();
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "--- output of {} ---\n{}--- end of {} ---",
                self.name,
                self.output(),
                self.name
            );
        }
    }
}

fn read_lines(stream: Box<dyn Read + Send>, output: &Captured) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']).to_owned();
                output.lock().lines.push(text);
                output.changed.notify_all();
            }
        }
    }
    output.lock().open_streams -= 1;
    output.changed.notify_all();
}

/// Runs a short command to completion and returns its stdout; panics, with its stderr, if it fails or takes more
/// than a few seconds.
pub fn run(command: &mut Command) -> String {
    let output = output_within(command, RUN_TIMEOUT).unwrap_or_else(|err| panic!("{command:?}: {err}"));
    if !output.status.success() {
        panic!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs a command to completion, killing it if it takes longer than `timeout`.
pub fn output_within(command: &mut Command, timeout: Duration) -> std::io::Result<Output> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = Pid::from_raw(child.id() as i32);
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || sender.send(child.wait_with_output()));
    match receiver.recv_timeout(timeout) {
        Ok(output) => output,
        Err(_) => {
            // The waiting thread has not reaped the process (it would have sent its result), so the pid is still
            // ours; it reaps it once killed.
            let _ = kill(pid, Signal::SIGKILL);
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("still running after {timeout:?}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    #[test]
    fn finds_lines_from_both_streams() {
        let child = Child::spawn("echo", &mut shell("echo one; echo 'two serving' >&2; exec sleep 30"));
        let line = child.wait_for_line("serving", Duration::from_secs(5)).unwrap();
        assert_eq!(line, "two serving");
        assert_eq!(child.wait_for_line("one", Duration::from_secs(5)).unwrap(), "one");
    }

    #[test]
    fn a_closed_output_ends_the_wait_early() {
        let child = Child::spawn("quiet", &mut shell("echo nothing useful"));
        let started = Instant::now();
        let err = child
            .wait_for_line("ready", Duration::from_secs(30))
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < Duration::from_secs(10), "{err}");
        assert!(
            err.contains("(output closed)") && err.contains("nothing useful"),
            "{err}"
        );
    }

    #[test]
    fn a_wait_for_a_missing_line_is_bounded() {
        let child = Child::spawn("sleeper", &mut shell("sleep 30"));
        let err = child
            .wait_for_line("never", Duration::from_millis(100))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("gave up after 100ms waiting for a line containing \"never\" from sleeper"),
            "{err}"
        );
    }

    #[test]
    fn reports_how_the_process_exited() {
        let mut child = Child::spawn("exit", &mut shell("exit 3"));
        assert_eq!(child.wait_exit(Duration::from_secs(5)).unwrap().code(), Some(3));
    }

    #[test]
    fn a_process_that_ignores_sigterm_is_killed() {
        let mut child = Child::spawn("stubborn", &mut shell("trap '' TERM; echo armed; exec sleep 30"));
        child.wait_for_line("armed", Duration::from_secs(5)).unwrap();
        let started = Instant::now();
        let status = child.terminate();
        assert!(started.elapsed() < TERM_GRACE + Duration::from_secs(5));
        assert!(!status.success());
    }

    #[test]
    fn run_returns_stdout_and_bounds_the_wait() {
        assert_eq!(run(&mut shell("echo hi")), "hi\n");
        let err = output_within(&mut shell("sleep 30"), Duration::from_millis(100)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    }

    #[test]
    #[should_panic(expected = "failed")]
    fn run_panics_on_failure() {
        run(&mut shell("echo oops >&2; exit 1"));
    }
}
