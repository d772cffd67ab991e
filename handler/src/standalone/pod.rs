//! A standalone pod on disk: its directory, what the handler and the shim record there, and what is observed of it.
//!
//! ```text
//! STATE/pods/NAMESPACE_NAME/
//!   pod.json      the pod's network (namespace, addresses) and when it was made
//!   vm.json       the VirtualMachine the launcher runs (its spec is compared with the manifest's)
//!   resolv.conf   the pod's resolver configuration
//!   shim.json     the shim's pid and start time, once the launcher runs
//!   exit.json     how the launcher ended
//!   launcher.log  the shim's and the launcher's output
//!   stopping.json when the pod was asked to stop, and the guest's grace period
//!   run/          the launcher's run dir: control.sock, console.log, libvirt
//! ```
//!
//! These files are the pod's, as a kubelet's are: the handler keeps nothing in memory that it cannot find here again.

use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ipnet::{Ipv4Net, Ipv6Net};
use nix::sys::wait::WaitStatus;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use vmlet_api::VirtualMachine;
use vmlet_api::defaults::ClusterDefaults;
use vmlet_control::RunDir;

use super::manifests::VmKey;

/// A pod's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodDir {
    path: PathBuf,
}

/// The pod's network and identity, written when the pod is made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub netns: String,
    pub address: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// The pod's IPv6 address, when the machine has an IPv6 pool; its gateway is [`vmlet_podnet::GATEWAY_V6`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_v6: Option<Ipv6Net>,
    /// Seconds since the epoch.
    pub created_at: u64,
    #[serde(default)]
    pub created_at_nanos: u32,
}

impl PodRecord {
    pub fn new(
        key: &VmKey,
        netns: String,
        address: Ipv4Net,
        gateway: Ipv4Addr,
        address_v6: Option<Ipv6Net>,
    ) -> PodRecord {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        PodRecord {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            netns,
            address,
            gateway,
            address_v6,
            created_at: now.as_secs(),
            created_at_nanos: now.subsec_nanos(),
        }
    }

    pub fn key(&self) -> VmKey {
        VmKey {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// Names this pod among every pod the VM ever had, as a Pod's uid does.
    pub fn uid(&self) -> String {
        format!("{}-{}.{:09}", self.netns, self.created_at, self.created_at_nanos)
    }
}

/// When a pod was asked to stop, why, and how long its guest may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct StopRecord {
    requested_at: u64,
    grace_secs: u64,
    why: StopFor,
}

/// Why a pod is stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StopFor {
    /// The run strategy, or the manifest's removal, wants the VM down.
    Good,
    /// The manifest was edited: the VM starts again with the new spec.
    Restart,
}

/// The running shim, identified by its pid and start time so that a reused pid is not mistaken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimRecord {
    pub pid: u32,
    pub start_time: u64,
}

/// How the launcher ended: its exit code, or the signal that killed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// Seconds since the epoch.
    pub finished_at: u64,
}

impl ExitRecord {
    pub fn from_wait(status: WaitStatus) -> ExitRecord {
        let (code, signal) = match status {
            WaitStatus::Exited(_, code) => (Some(code), None),
            WaitStatus::Signaled(_, signal, _) => (None, Some(signal as i32)),
            _ => (None, None),
        };
        ExitRecord {
            code,
            signal,
            finished_at: now_secs(),
        }
    }
}

/// What the shim's records say of a pod's launcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShimState {
    /// The pod is made but its shim has not recorded itself yet.
    Starting,
    /// The shim runs.
    Running(ShimRecord),
    /// The launcher ended as recorded.
    Ended(ExitRecord),
    /// The shim is gone without a record of the launcher's end: it was killed.
    Lost,
}

impl PodDir {
    pub fn new(path: PathBuf) -> PodDir {
        PodDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn record(&self) -> PathBuf {
        self.path.join("pod.json")
    }

    pub fn vm(&self) -> PathBuf {
        self.path.join("vm.json")
    }

    pub fn resolv_conf(&self) -> PathBuf {
        self.path.join("resolv.conf")
    }

    pub fn launcher_log(&self) -> PathBuf {
        self.path.join("launcher.log")
    }

    /// Where the launcher writes its last error when it cannot run the VM, as a container's termination log.
    pub fn termination_log(&self) -> PathBuf {
        self.path.join("termination-log")
    }

    /// What the launcher said last of why it failed: its termination log, else its log's last line, as
    /// Kubernetes' `FallbackToLogsOnError` does.
    pub fn last_words(&self) -> Option<String> {
        let last_line = |text: String| {
            text.lines()
                .rev()
                .map(str::trim)
                .find(|line| !line.is_empty())
                .map(str::to_owned)
        };
        std::fs::read_to_string(self.termination_log())
            .ok()
            .and_then(last_line)
            .or_else(|| std::fs::read_to_string(self.launcher_log()).ok().and_then(last_line))
    }

    /// Why the handler ended the guest's run itself (its liveness probe failed), written before it did.
    fn ended_by_handler(&self) -> PathBuf {
        self.path.join("ended-by-handler")
    }

    pub fn note_ended_by_handler(&self, why: &str) -> anyhow::Result<()> {
        std::fs::write(self.ended_by_handler(), why)
            .with_context(|| format!("cannot write {}", self.ended_by_handler().display()))
    }

    /// Why the run ended as a failure: the handler's reason when it ended the run, else the launcher's last words.
    pub fn failure_reason(&self) -> Option<String> {
        std::fs::read_to_string(self.ended_by_handler())
            .ok()
            .or_else(|| self.last_words())
    }

    /// The pod's volumes folder, where the launcher finds images, claims and Secrets ([`vmlet_control::PodVolumes`]).
    pub fn volumes_dir(&self) -> PathBuf {
        self.path.join("volumes")
    }

    /// The launcher's run directory.
    pub fn run_dir(&self) -> RunDir {
        RunDir::new(self.path.join("run"))
    }

    fn stopping(&self) -> PathBuf {
        self.path.join("stopping.json")
    }

    fn shim(&self) -> PathBuf {
        self.path.join("shim.json")
    }

    fn exit(&self) -> PathBuf {
        self.path.join("exit.json")
    }

    pub fn read_record(&self) -> anyhow::Result<PodRecord> {
        read_json(&self.record())
    }

    pub fn write_record(&self, record: &PodRecord) -> anyhow::Result<()> {
        write_json(&self.record(), record)
    }

    pub fn write_shim(&self, record: &ShimRecord) -> anyhow::Result<()> {
        write_json(&self.shim(), record)
    }

    pub fn write_exit(&self, record: &ExitRecord) -> anyhow::Result<()> {
        write_json(&self.exit(), record)
    }

    pub fn read_vm(&self) -> anyhow::Result<VirtualMachine> {
        read_json(&self.vm())
    }

    pub fn write_vm(&self, vm: &VirtualMachine) -> anyhow::Result<()> {
        write_json(&self.vm(), vm)
    }

    /// Whether the launcher runs a spec other than `vm`'s: the manifest was edited since the pod was made.
    /// The running VM gets the defaults too: a launcher made before they were applied runs the same VM.
    pub fn runs_other_spec(&self, vm: &VirtualMachine, defaults: &ClusterDefaults) -> bool {
        self.read_vm().is_ok_and(|mut running| {
            vmlet_api::defaults::apply(&mut running, defaults);
            running.spec != vm.spec
        })
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping().exists()
    }

    pub fn mark_stopping(&self, grace_secs: u64, why: StopFor) -> anyhow::Result<()> {
        let record = StopRecord {
            requested_at: now_secs(),
            grace_secs,
            why,
        };
        write_json(&self.stopping(), &record)
    }

    pub fn stopping_for(&self) -> Option<StopFor> {
        read_json::<StopRecord>(&self.stopping()).ok().map(|stop| stop.why)
    }

    /// Whether the launcher had its guest's grace period and `margin` more since it was asked to stop.
    pub fn stop_overdue(&self, margin: std::time::Duration) -> bool {
        read_json::<StopRecord>(&self.stopping())
            .is_ok_and(|stop| now_secs() > stop.requested_at + stop.grace_secs + margin.as_secs())
    }

    /// The launcher's state, from the shim's records and whether the recorded shim still runs.
    pub fn shim_state(&self) -> ShimState {
        if let Ok(exit) = read_json::<ExitRecord>(&self.exit()) {
            return ShimState::Ended(exit);
        }
        match read_json::<ShimRecord>(&self.shim()) {
            Ok(shim) if process_start_time(shim.pid).ok() == Some(shim.start_time) => ShimState::Running(shim),
            // The shim may have written exit.json between the two reads.
            Ok(_) => match read_json::<ExitRecord>(&self.exit()) {
                Ok(exit) => ShimState::Ended(exit),
                Err(_) => ShimState::Lost,
            },
            Err(_) => ShimState::Starting,
        }
    }
}

/// A process's start time in clock ticks since boot (field 22 of `/proc/PID/stat`).
pub fn process_start_time(pid: u32) -> io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name, field 2, is in parentheses and may hold spaces: count from the last ')'.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    after_name
        .split_whitespace()
        .nth(19)
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("unexpected /proc/{pid}/stat")))
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn read_json<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
}

/// Writes through a temporary file and a rename, so a reader never sees half a record.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod made before IPv6 pools has a record without an IPv6 address, and a pod of an IPv4-only machine
    /// writes none.
    #[test]
    fn the_ipv6_address_of_a_pod_record_is_optional() {
        let key = VmKey::from_file_stem("default_demo").unwrap();
        let gateway = Ipv4Addr::new(10, 111, 0, 1);
        let v4_only = PodRecord::new(
            &key,
            "vmlet-default-demo".into(),
            "10.111.0.2/24".parse().unwrap(),
            gateway,
            None,
        );
        let text = serde_json::to_string(&v4_only).unwrap();
        assert!(!text.contains("address_v6"), "{text}");
        assert_eq!(serde_json::from_str::<PodRecord>(&text).unwrap(), v4_only);
        let dual = PodRecord {
            address_v6: Some("fd00:6d76:6c74::2/64".parse().unwrap()),
            ..v4_only
        };
        let text = serde_json::to_string(&dual).unwrap();
        assert_eq!(serde_json::from_str::<PodRecord>(&text).unwrap(), dual);
    }

    #[test]
    fn the_start_time_of_this_process_is_read_and_stable() {
        let me = std::process::id();
        let first = process_start_time(me).unwrap();
        assert!(first > 0);
        assert_eq!(process_start_time(me).unwrap(), first);
    }

    #[test]
    fn the_shim_state_follows_the_records() {
        let dir = std::env::temp_dir().join(format!("vmlet-pod-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pod = PodDir::new(dir.clone());
        assert_eq!(pod.shim_state(), ShimState::Starting);
        let me = std::process::id();
        let alive = ShimRecord {
            pid: me,
            start_time: process_start_time(me).unwrap(),
        };
        pod.write_shim(&alive).unwrap();
        assert_eq!(pod.shim_state(), ShimState::Running(alive));
        pod.write_shim(&ShimRecord {
            start_time: alive.start_time + 1,
            ..alive
        })
        .unwrap();
        assert_eq!(pod.shim_state(), ShimState::Lost, "a reused pid is not the shim");
        let exit = ExitRecord {
            code: Some(4),
            signal: None,
            finished_at: 7,
        };
        pod.write_exit(&exit).unwrap();
        assert_eq!(pod.shim_state(), ShimState::Ended(exit));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_launchers_last_words_are_its_termination_log_else_its_logs_last_line() {
        let dir = std::env::temp_dir().join(format!("vmlet-pod-words-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pod = PodDir::new(dir.clone());
        assert_eq!(pod.last_words(), None);
        std::fs::write(pod.launcher_log(), "INFO starting\nvmlet-launcher: no kernel\n\n").unwrap();
        assert_eq!(pod.last_words().as_deref(), Some("vmlet-launcher: no kernel"));
        std::fs::write(pod.termination_log(), "could not open kernel file 'k'").unwrap();
        assert_eq!(pod.last_words().as_deref(), Some("could not open kernel file 'k'"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
