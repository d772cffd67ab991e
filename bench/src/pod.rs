//! The VM pod of the `boot` and `cloud-boot` benchmarks: `vmlet-launcher run` as a pod runs it (as
//! `tests/tests/launcher.rs` does), in a pod network namespace whose `eth0` is a veth to a node namespace holding the
//! gateway, as PID 1 of a PID namespace of its own, logging JSON lines whose time stamps give its phases.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use vmlet_testkit::{Child, NetNs, ScratchDir, VethEnd, binary, poll_until, veth};

use crate::pidns::{self, ProcessMemory};
use crate::procfs::{first_child, has_exited, process_start};
use crate::timeline::LogEvents;

// The pod every guest of these benchmarks takes the identity of, as in the launcher's end-to-end tests; the bare
// guests get the same from dnsmasq.
pub const POD_MAC: &str = "02:42:0a:f4:01:07";
pub const POD_ADDRESS: &str = "10.244.1.7";
pub const GATEWAY: &str = "10.244.1.1";
pub const NETMASK: &str = "255.255.255.0";
pub const MTU: u32 = 1400;
pub const DNS: &str = "10.96.0.10";
pub const SEARCH: &str = "default.svc.cluster.local";
pub const VM_NAME: &str = "benchvm";
/// The bound on anything that does not wait for a guest.
pub const WAIT: Duration = Duration::from_secs(30);

/// A running launcher in its pod. Dropping it kills the launcher (and with it everything in its PID namespace),
/// then removes the namespaces and the directory.
pub struct LauncherPod {
    // Dropped in this order: the launcher, then its namespaces and directory.
    launcher: Child,
    /// PID 1 of the launcher's PID namespace, as the host sees it.
    pub pid1: u32,
    /// When the benchmark spawned it.
    pub spawned: SystemTime,
    /// Where the gateway is: the guest is reached from here.
    pub node: NetNs,
    // Held for its lifetime only: the launcher's own namespace.
    _pod: NetNs,
    dir: ScratchDir,
}

impl LauncherPod {
    /// Makes the pod, writes `manifest`, links each `(volume, image root)` of `container_disks` where the pod
    /// provides a containerDisk's image (`vmlet_control::PodVolumes`: `VOLUMES/disks/NAME/`, a link as the
    /// standalone handler makes), and spawns the launcher with the accelerator `accel` and QEMU's capability cache
    /// in `cache`.
    pub fn start(
        manifest: &str,
        cache: &Path,
        accel: &str,
        container_disks: &[(&str, &Path)],
    ) -> anyhow::Result<LauncherPod> {
        let (node, pod, dir) = (NetNs::new(), NetNs::new(), ScratchDir::new());
        veth::link(
            &node,
            &VethEnd::named("veth-node").mtu(MTU).address(&format!("{GATEWAY}/24")),
            &pod,
            &VethEnd::named("eth0")
                .mtu(MTU)
                .mac(POD_MAC)
                .address(&format!("{POD_ADDRESS}/24")),
        );
        pod.ip(&["route", "add", "default", "via", GATEWAY]);
        let resolv_conf = dir.write("resolv.conf", format!("nameserver {DNS}\nsearch {SEARCH}\n"));
        let manifest = dir.write("vm.yaml", manifest);
        let volumes = dir.join("volumes");
        std::fs::create_dir_all(volumes.join("disks"))?;
        for (volume, root) in container_disks {
            std::os::unix::fs::symlink(root, volumes.join("disks").join(volume))
                .with_context(|| format!("cannot link the image of volume {volume}"))?;
        }
        let mut command = pod.exec("unshare");
        command
            .args(["--pid", "--fork", "--kill-child", "--mount-proc"])
            .arg(binary("vmlet-launcher"))
            .args(["run", "--vm-spec"])
            .arg(&manifest)
            .arg("--run-dir")
            .arg(dir.join("run"))
            .arg("--cache-dir")
            .arg(cache)
            .arg("--resolv-conf")
            .arg(&resolv_conf)
            .arg("--volumes-dir")
            .arg(&volumes)
            .env("VMLET_ACCEL", accel)
            // JSON lines, from the environment rather than an option: a driver process it starts logs them too.
            .env("VMLET_LOG_JSON", "true")
            .env("NO_COLOR", "1");
        let spawned = SystemTime::now();
        let launcher = Child::spawn("vmlet-launcher run", &mut command);
        // `unshare --fork`'s only child is PID 1 of the launcher's PID namespace.
        let unshare = launcher.pid();
        let pid1 = poll_until("PID 1 under unshare", WAIT, Duration::from_millis(5), || {
            first_child(unshare)
        })
        .map_err(|err| anyhow!("{err}\n--- launcher ---\n{}", launcher.output()))?;
        Ok(LauncherPod {
            launcher,
            pid1,
            spawned,
            node,
            _pod: pod,
            dir,
        })
    }

    pub fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    pub fn console_log(&self) -> PathBuf {
        self.run_dir().join("console.log")
    }

    /// Everything the launcher (and the driver it started) printed so far.
    pub fn output(&self) -> String {
        self.launcher.output()
    }

    pub fn has_exited(&self) -> bool {
        has_exited(self.launcher.pid())
    }

    /// `err` with what the launcher printed.
    pub fn explain(&self, err: anyhow::Error) -> anyhow::Error {
        anyhow!("{err:#}\n--- launcher ---\n{}", self.output())
    }

    /// Every process of the pod's PID namespace with its memory, and when its QEMU started.
    pub fn processes(&self) -> anyhow::Result<(Vec<ProcessMemory>, SystemTime)> {
        let processes = pidns::processes_of_namespace(self.pid1).context("cannot read the pod's processes")?;
        let qemu_started = processes
            .iter()
            .find(|process| process.role == "QEMU")
            .ok_or_else(|| anyhow!("no QEMU in the pod: {processes:?}"))
            .and_then(|qemu| process_start(qemu.pid))?;
        Ok((processes, qemu_started))
    }

    /// SIGTERM to PID 1, as a container runtime sends it: an ACPI shutdown of the guest, and the launcher exits.
    pub fn stop(mut self) {
        let _ = kill(Pid::from_raw(self.pid1 as i32), Signal::SIGTERM);
        match self.launcher.wait_exit(WAIT) {
            Ok(status) if status.success() => {}
            Ok(status) => eprintln!("the launcher exited with {status} on SIGTERM"),
            // Dropping the child kills it, and the network namespaces' drop whatever is left in them.
            Err(err) => eprintln!("{err}"),
        }
    }
}

/// When the launcher reached each step of its start, from its log lines; consecutive.
pub struct LauncherMarks {
    /// Disks checked, overlays and cloud-init seeds made.
    pub storage: SystemTime,
    /// The accelerator chosen; the network is next.
    pub starting: SystemTime,
    /// The binding done: pod interface rewired, tap ready.
    pub network: SystemTime,
    /// libvirt's QEMU driver open (its capabilities probed or read from the cache) in `vmlet-driver`.
    pub driver: SystemTime,
    /// The domain defined and started: QEMU runs the guest.
    pub domain: SystemTime,
}

impl LauncherMarks {
    pub fn of(log: &LogEvents) -> anyhow::Result<LauncherMarks> {
        Ok(LauncherMarks {
            storage: log.last("storage prepared")?,
            starting: log.last("starting")?,
            network: log.last("network ready")?,
            // The driver's own line where the launcher logs none (the driver in a process of its own).
            driver: log
                .last("libvirt ready")
                .or_else(|_| log.last("libvirt's QEMU driver is ready"))?,
            domain: log.last("domain started")?,
        })
    }
}
