//! Standalone mode under random faults: three VMs of the test guest, and a run of faults drawn from a seed (the
//! handler, a launcher, a QEMU or a shim killed; a manifest removed, written back or edited). After each fault
//! every wanted VM runs with an address of its own that its guest leased, nothing of a removed VM is left (process,
//! namespace, pod folder, status), and the VMs the fault was not aimed at kept their QEMU.
//!
//! The seed is printed; `VMLET_FAULT_SEED=N` replays a run, `VMLET_FAULTS=N` sets its length (10).
//!
//! Needs root and the built `vmlet-handler`, `vmlet-launcher` and `vmlet-driver` (`cargo build --workspace`).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use nix::sys::signal::Signal;
use vmlet_testkit::poll_until;
use vmlet_testkit::standalone::{BOOT, Machine, WAIT};
use vmlet_testkit::vm_pod::{children, fields, one_guest_at_a_time};

const VMS: [&str; 3] = ["one", "two", "three"];

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillHandler,
    KillLauncher(&'static str),
    KillQemu(&'static str),
    KillShim(&'static str),
    /// Removes the manifest, or writes it back when it is gone.
    ToggleManifest(&'static str),
    /// Changes the guest's memory, which restarts the VM with the new spec.
    EditManifest(&'static str),
}

impl Fault {
    fn draw(rng: &mut fastrand::Rng) -> Fault {
        let vm = VMS[rng.usize(..VMS.len())];
        match rng.u8(..6) {
            0 => Fault::KillHandler,
            1 => Fault::KillLauncher(vm),
            2 => Fault::KillQemu(vm),
            3 => Fault::KillShim(vm),
            4 => Fault::ToggleManifest(vm),
            _ => Fault::EditManifest(vm),
        }
    }

    /// The VM whose run the fault ends, if any.
    fn target(self) -> Option<&'static str> {
        match self {
            Fault::KillHandler => None,
            Fault::KillLauncher(vm)
            | Fault::KillQemu(vm)
            | Fault::KillShim(vm)
            | Fault::ToggleManifest(vm)
            | Fault::EditManifest(vm) => Some(vm),
        }
    }
}

/// A process and its descendants, depth first.
fn descendants(pid: i32) -> Vec<i32> {
    let mut found = vec![pid];
    let mut next = 0;
    while next < found.len() {
        found.extend(children(found[next]));
        next += 1;
    }
    found
}

fn command_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Every live process whose command line names `needle`.
fn processes_naming(needle: &str) -> BTreeSet<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = state
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            !zombie && String::from_utf8_lossy(&cmdline).contains(needle)
        })
        .collect()
}

/// One running VM as the test sees it.
#[derive(Debug)]
struct Running {
    shim: u32,
    qemu: i32,
    address: String,
}

struct Faults {
    machine: Machine,
    /// Whether each VM's manifest is there, and with which memory.
    manifests: BTreeMap<&'static str, Option<&'static str>>,
    running: BTreeMap<&'static str, Running>,
}

impl Faults {
    fn write_manifest(&mut self, vm: &'static str, memory: &'static str) {
        let path = self.machine.add_vm(vm, "Always");
        if memory != "256Mi" {
            let text = std::fs::read_to_string(&path)
                .unwrap()
                .replace("guest: 256Mi", &format!("guest: {memory}"));
            std::fs::write(&path, text).unwrap();
        }
        self.manifests.insert(vm, Some(memory));
    }

    /// The QEMU that runs `vm`'s guest under the shim `shim`: the process libvirt's pid file names, which holds
    /// its pid in the pod's PID namespace (libvirt's short-lived QEMUs that probe capabilities are not it).
    fn qemu_of(&self, vm: &str, shim: u32) -> Option<i32> {
        let pid_dir = self.machine.pod_dir(vm).join("run/libvirt/run/qemu");
        let in_pod: BTreeSet<i32> = std::fs::read_dir(pid_dir)
            .ok()?
            .flatten()
            .filter(|entry| entry.path().extension().is_some_and(|e| e == "pid"))
            .filter_map(|entry| std::fs::read_to_string(entry.path()).ok()?.trim().parse().ok())
            .collect();
        descendants(shim as i32).into_iter().find(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let innermost = status
                .lines()
                .find_map(|line| line.strip_prefix("NSpid:"))
                .and_then(|pids| pids.split_whitespace().last()?.parse::<i32>().ok());
            innermost.is_some_and(|p| in_pod.contains(&p)) && command_of(*pid).starts_with("qemu")
        })
    }

    /// The processes of `vm`'s pod and libvirt's pid files, for a failure's message.
    fn processes(&self, vm: &str) -> String {
        let pid_dir = self.machine.pod_dir(vm).join("run/libvirt/run/qemu");
        let pid_files: Vec<String> = std::fs::read_dir(&pid_dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| {
                        let pid = std::fs::read_to_string(e.path()).unwrap_or_default();
                        format!("{} = {}", e.path().display(), pid.trim())
                    })
                    .collect()
            })
            .unwrap_or_default();
        let shim = std::fs::read_to_string(self.machine.pod_dir(vm).join("shim.json")).unwrap_or_default();
        let shim: serde_json::Value = serde_json::from_str(&shim).unwrap_or_default();
        let tree: Vec<String> = shim["pid"]
            .as_i64()
            .map(|pid| descendants(pid as i32))
            .unwrap_or_default()
            .into_iter()
            .map(|pid| {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let nspid = status
                    .lines()
                    .find(|l| l.starts_with("NSpid:"))
                    .unwrap_or_default()
                    .to_owned();
                format!("{pid} {} {nspid}", command_of(pid))
            })
            .collect();
        format!("--- pid files ---\n{pid_files:#?}\n--- processes ---\n{tree:#?}")
    }

    /// Waits until `vm` runs in a pod other than `old_shim`'s, its guest leased the pod's address and its status
    /// shows it; returns what runs.
    fn wait_running(&self, vm: &'static str, old_shim: Option<u32>) -> Running {
        let machine = &self.machine;
        let (shim, qemu) = poll_until(
            format!("{vm} to run in a new pod"),
            BOOT,
            Duration::from_millis(250),
            || {
                let record = std::fs::read_to_string(machine.pod_dir(vm).join("shim.json")).ok()?;
                let record: serde_json::Value = serde_json::from_str(&record).ok()?;
                let shim = record["pid"].as_u64()? as u32;
                if Some(shim) == old_shim {
                    return None;
                }
                Some((shim, self.qemu_of(vm, shim)?))
            },
        )
        .unwrap_or_else(|timeout| panic!("{timeout}\n{}\n{}", self.processes(vm), machine.diagnostics(vm)));
        let lease = fields(&machine.wait_lease(vm));
        let pod: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(machine.pod_dir(vm).join("pod.json")).unwrap()).unwrap();
        // The pod's address with its prefix length, as the lease has it.
        let address = pod["address"].as_str().unwrap().split('/').next().unwrap().to_owned();
        let leased = lease["ip"].split('/').next().unwrap().to_owned();
        assert_eq!(
            leased,
            address,
            "{vm}'s guest leased its pod's address\n{}",
            machine.diagnostics(vm)
        );
        machine.wait_status(vm, &["Running", "True", &address], WAIT);
        Running { shim, qemu, address }
    }

    /// Waits until nothing of `vm` is left: its pod folder, its namespace, its status, its processes.
    fn wait_gone(&self, vm: &str, shim: Option<u32>) {
        let machine = &self.machine;
        let pod_dir = machine.pod_dir(vm);
        let needle = pod_dir.display().to_string();
        let status = machine.manifests().join(format!("{vm}.status.yaml"));
        poll_until(
            format!("nothing of {vm} left"),
            WAIT,
            Duration::from_millis(250),
            || {
                let shim_alive = shim.is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
                (!pod_dir.exists() && !status.exists() && processes_naming(&needle).is_empty() && !shim_alive)
                    .then_some(())
            },
        )
        .unwrap_or_else(|timeout| panic!("{timeout}\n{}", machine.diagnostics(vm)));
        assert!(!machine.status().contains(&format!(" {vm} ")), "{}", machine.status());
    }

    /// What holds after every fault, beside what [`Faults::wait_running`] and [`Faults::wait_gone`] checked.
    fn check_machine(&self) {
        let wanted = self.manifests.values().filter(|m| m.is_some()).count();
        let machine = &self.machine;
        assert_eq!(
            machine.pod_namespaces().len(),
            wanted,
            "a namespace per wanted VM: {:?}",
            machine.pod_namespaces()
        );
        let addresses: BTreeSet<&str> = self.running.values().map(|r| r.address.as_str()).collect();
        assert_eq!(
            addresses.len(),
            self.running.len(),
            "unique addresses: {:?}",
            self.running
        );
        // Every QEMU of the machine runs a wanted VM, under that VM's shim (libvirt's probes come and go).
        let state = machine.dir().join("state").display().to_string();
        let expected: BTreeSet<i32> = self.running.values().map(|r| r.qemu).collect();
        let qemus = || -> BTreeSet<i32> {
            processes_naming(&state)
                .into_iter()
                .filter(|pid| command_of(*pid).starts_with("qemu"))
                .collect()
        };
        poll_until("only the wanted VMs' QEMUs", WAIT, Duration::from_millis(250), || {
            (qemus() == expected).then_some(())
        })
        .unwrap_or_else(|timeout| panic!("{timeout}: {:?}, wanted {expected:?}", qemus()));
    }

    fn apply(&mut self, fault: Fault) {
        let before: BTreeMap<&str, i32> = self.running.iter().map(|(vm, r)| (*vm, r.qemu)).collect();
        let kill = |pid: i32| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        match fault {
            Fault::KillHandler => {
                self.machine.handler().signal(Signal::SIGKILL);
                self.machine.handler().wait_exit(WAIT).unwrap();
                self.machine.start_handler();
                self.machine
                    .handler()
                    .wait_for_line("standalone mode started", WAIT)
                    .unwrap();
            }
            Fault::KillLauncher(vm) | Fault::KillQemu(vm) | Fault::KillShim(vm) => {
                let Some(running) = self.running.get(vm) else {
                    println!("  {vm} does not run: nothing to kill");
                    return self.check_machine();
                };
                let pid = match fault {
                    Fault::KillLauncher(_) => children(running.shim as i32)[0],
                    Fault::KillQemu(_) => running.qemu,
                    _ => running.shim as i32,
                };
                kill(pid);
            }
            Fault::ToggleManifest(vm) => {
                if self.manifests[vm].is_some() {
                    std::fs::remove_file(self.machine.manifests().join(format!("{vm}.yaml"))).unwrap();
                    self.manifests.insert(vm, None);
                } else {
                    self.write_manifest(vm, "256Mi");
                }
            }
            Fault::EditManifest(vm) => match self.manifests[vm] {
                Some(memory) => self.write_manifest(vm, if memory == "256Mi" { "320Mi" } else { "256Mi" }),
                None => {
                    println!("  {vm} has no manifest: nothing to edit");
                    return self.check_machine();
                }
            },
        }

        // The target's run ended (or, its manifest gone, everything of it), and a new one began if it is wanted.
        if let Some(vm) = fault.target() {
            let old = self.running.remove(vm);
            if self.manifests[vm].is_some() {
                let running = self.wait_running(vm, old.as_ref().map(|r| r.shim));
                self.running.insert(vm, running);
            } else {
                self.wait_gone(vm, old.map(|r| r.shim));
            }
        }
        // Let the handler make a few passes, then nothing else may have changed.
        std::thread::sleep(Duration::from_secs(2));
        for (vm, running) in &self.running {
            if Some(*vm) != fault.target() {
                self.machine
                    .wait_status(vm, &["Running", "True", &running.address], WAIT);
                assert_eq!(
                    self.qemu_of(vm, running.shim),
                    before.get(vm).copied(),
                    "{vm} was not faulted and kept its QEMU\n{}",
                    self.machine.diagnostics(vm)
                );
            }
        }
        self.check_machine();
    }
}

#[test]
fn standalone_mode_keeps_every_wanted_vm_running_through_random_faults() {
    let seed = std::env::var("VMLET_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let count: usize = std::env::var("VMLET_FAULTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    println!("fault seed {seed} (VMLET_FAULT_SEED={seed} replays this run)");
    let mut rng = fastrand::Rng::with_seed(seed);

    let _guest = one_guest_at_a_time();
    let mut faults = Faults {
        machine: Machine::new(),
        manifests: BTreeMap::new(),
        running: BTreeMap::new(),
    };
    for vm in VMS {
        faults.write_manifest(vm, "256Mi");
    }
    faults.machine.start_handler();
    for vm in VMS {
        let running = faults.wait_running(vm, None);
        faults.running.insert(vm, running);
    }
    faults.check_machine();

    for step in 1..=count {
        let fault = Fault::draw(&mut rng);
        println!("fault {step}/{count}: {fault:?}");
        faults.apply(fault);
    }
}
