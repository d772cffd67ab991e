//! Network namespaces that a test owns and that disappear with it.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::child::{output_within, run};
use crate::owner::{Owner, unique_name};
use crate::wait::poll_until;

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";

/// A named network namespace (`vmlet-t-PID-START-N`) with only `lo`, up. Dropping it kills every process still in
/// it and deletes it.
pub struct NetNs {
    name: String,
}

impl NetNs {
    pub fn new() -> NetNs {
        crate::require_root();
        crate::sweep_stale();
        let name = unique_name();
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace.
    pub fn exec(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Runs `ip -n NAME ARGS...` and returns its output; panics if it fails.
    pub fn ip(&self, args: &[&str]) -> String {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Runs a short program inside the namespace and returns its output; panics if it fails.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        run(self.exec(program).args(args))
    }

    /// The processes running inside the namespace.
    pub fn pids(&self) -> Vec<u32> {
        pids(&self.name)
    }
}

impl Default for NetNs {
    fn default() -> Self {
        NetNs::new()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        remove(&self.name);
    }
}

fn pids(name: &str) -> Vec<u32> {
    let output = output_within(
        Command::new("ip").args(["netns", "pids", name]),
        Duration::from_secs(10),
    );
    output
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Removes the namespaces whose names start with `prefix`, made by a program under test, and what runs in them.
pub fn remove_namespaces(prefix: &str) {
    for name in namespaces().into_iter().filter(|n| n.starts_with(prefix)) {
        remove(&name);
    }
}

/// The names of the namespaces under [`NETNS_DIR`].
pub fn namespaces() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(Path::new(NETNS_DIR)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

/// Kills what runs in the namespace, then deletes it. Best effort: a drop must not panic, and the next sweep
/// retries what is left.
fn remove(name: &str) {
    let gone = poll_until(
        format!("processes in {name} to die"),
        Duration::from_secs(3),
        Duration::from_millis(20),
        || {
            let left = pids(name);
            for &pid in &left {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            left.is_empty().then_some(())
        },
    );
    if let Err(err) = gone {
        eprintln!("vmlet-testkit: {err}");
    }
    let deleted = output_within(
        Command::new("ip").args(["netns", "delete", name]),
        Duration::from_secs(10),
    );
    match deleted {
        Ok(output) if output.status.success() => {}
        Ok(output) => eprintln!(
            "vmlet-testkit: cannot delete namespace {name}: {}",
            String::from_utf8_lossy(&output.stderr).trim_end()
        ),
        Err(err) => eprintln!("vmlet-testkit: cannot delete namespace {name}: {err}"),
    }
}

/// Removes the namespaces of test processes that are gone.
pub(crate) fn sweep_stale() {
    for name in namespaces() {
        if Owner::from_name(&name).is_some_and(|owner| !owner.is_alive()) {
            remove(&name);
        }
    }
}
