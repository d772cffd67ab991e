//! KubeVirt's defaults, applied in one place: by the controller before it builds a launcher Pod, by standalone mode
//! before it runs a VM, by the launcher when it loads its spec, and by `vmlet-handler validate -o yaml` to show
//! them. Pure and idempotent: applying them twice changes nothing.

use std::fmt;
use std::str::FromStr;

use crate::{
    Bios, Bootloader, Clock, ClockOffsetUtc, Cpu, Disk, DiskTarget, Empty, FeatureState, Features, Firmware, Interface,
    Machine, Memory, Network, PodNetwork, RunStrategy, Timer, Timers, VirtualMachine, VirtualMachineInstanceSpec,
};

/// The machine type when the VM names none, or names the empty one (`machine.type: ""`).
pub const MACHINE_TYPE: &str = "q35";
/// The name of the network and interface added to a VM that names none, as in KubeVirt.
pub const POD_NETWORK_NAME: &str = "default";
/// Seconds the guest gets to shut down, as in KubeVirt.
pub const GRACE_PERIOD_SECONDS: u32 = 30;

impl VirtualMachineInstanceSpec {
    /// Seconds the guest gets to shut down: the spec's, else [`GRACE_PERIOD_SECONDS`]. The launcher waits this
    /// long before it destroys the guest; whoever stops a launcher gives it this long and a margin.
    pub fn grace_period_seconds(&self) -> u32 {
        self.termination_grace_period_seconds.unwrap_or(GRACE_PERIOD_SECONDS)
    }
}

/// What the cluster (or standalone mode) decides for every VM.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterDefaults {
    /// The binding of the interface added to a VM that names no network (KubeVirt's
    /// `defaultNetworkInterface` setting).
    pub network_binding: DefaultBinding,
}

/// The bindings a default interface may have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DefaultBinding {
    #[default]
    Bridge,
    Masquerade,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown binding {0:?}: expected bridge or masquerade")]
pub struct UnknownBinding(pub String);

impl FromStr for DefaultBinding {
    type Err = UnknownBinding;

    fn from_str(text: &str) -> Result<DefaultBinding, UnknownBinding> {
        match text {
            "bridge" => Ok(DefaultBinding::Bridge),
            "masquerade" => Ok(DefaultBinding::Masquerade),
            _ => Err(UnknownBinding(text.to_owned())),
        }
    }
}

impl fmt::Display for DefaultBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DefaultBinding::Bridge => "bridge",
            DefaultBinding::Masquerade => "masquerade",
        })
    }
}

/// Applies the defaults to a whole VM: `running` becomes the run strategy it stands for, then the template's
/// defaults. A VM that gives both `running` and `runStrategy` keeps both, for validation to refuse.
pub fn apply(vm: &mut VirtualMachine, cluster: &ClusterDefaults) {
    let spec = &mut vm.spec;
    if spec.run_strategy.is_none() {
        spec.run_strategy = Some(spec.run_strategy());
        spec.running = None;
    }
    apply_instance(&mut spec.template.spec, cluster);
}

/// Applies the defaults to a VM instance spec.
pub fn apply_instance(spec: &mut VirtualMachineInstanceSpec, cluster: &ClusterDefaults) {
    network(spec, cluster);
    disks(spec);
    let domain = &mut spec.domain;
    let machine = domain.machine.get_or_insert_with(Machine::default);
    if machine.machine_type.is_empty() {
        machine.machine_type = MACHINE_TYPE.into();
    }
    let vcpus_from_resources = domain.resources.as_ref().and_then(|r| {
        let cpu = r.limits.get("cpu").or_else(|| r.requests.get("cpu"))?;
        parse_cpus(cpu)
    });
    let cpu = domain.cpu.get_or_insert_with(Cpu::default);
    if cpu.sockets.is_none() && cpu.cores.is_none() && cpu.threads.is_none() {
        // KubeVirt's rule: without a topology, the pod's CPUs become sockets.
        cpu.sockets = Some(vcpus_from_resources.unwrap_or(1));
    }
    for count in [&mut cpu.sockets, &mut cpu.cores, &mut cpu.threads] {
        count.get_or_insert(1);
    }
    let from_resources = domain
        .resources
        .as_ref()
        .and_then(|r| r.requests.get("memory").or_else(|| r.limits.get("memory")).cloned());
    if domain.memory.as_ref().and_then(|m| m.guest.as_ref()).is_none()
        && let Some(guest) = from_resources
    {
        domain.memory.get_or_insert_with(Memory::default).guest = Some(guest);
    }
    let firmware = domain.firmware.get_or_insert_with(Firmware::default);
    if firmware.bootloader.is_none() && firmware.kernel_boot.is_none() {
        firmware.bootloader = Some(Bootloader {
            bios: Some(Bios::default()),
            efi: None,
        });
    }
    if let Some(efi) = firmware.bootloader.as_mut().and_then(|b| b.efi.as_mut()) {
        efi.secure_boot.get_or_insert(true);
    }
    // On unless turned off (`enabled: false`): ACPI carries the power button a graceful shutdown presses, and
    // SMP guests need the APIC.
    let features = domain.features.get_or_insert_with(Features::default);
    features.acpi.get_or_insert_with(FeatureState::default);
    features.apic.get_or_insert_with(FeatureState::default);
    // The timer policies virt-install uses: a guest starved of CPU catches up instead of drifting.
    domain.clock.get_or_insert_with(|| Clock {
        utc: Some(ClockOffsetUtc::default()),
        timezone: None,
        timer: Some(Timers {
            rtc: Some(tick_policy("catchup")),
            pit: Some(tick_policy("delay")),
            hpet: Some(Timer {
                present: Some(false),
                ..Timer::default()
            }),
            ..Timers::default()
        }),
    });
    spec.termination_grace_period_seconds
        .get_or_insert(GRACE_PERIOD_SECONDS);
}

fn tick_policy(policy: &str) -> Timer {
    Timer {
        tick_policy: Some(policy.into()),
        ..Timer::default()
    }
}

/// The pod network with an interface of the cluster's binding, when the VM names neither.
fn network(spec: &mut VirtualMachineInstanceSpec, cluster: &ClusterDefaults) {
    if !spec.networks.is_empty() || !spec.domain.devices.interfaces.is_empty() {
        return;
    }
    spec.networks.push(Network {
        name: POD_NETWORK_NAME.into(),
        pod: Some(PodNetwork::default()),
    });
    let mut interface = Interface {
        name: POD_NETWORK_NAME.into(),
        ..Interface::default()
    };
    match cluster.network_binding {
        DefaultBinding::Bridge => interface.bridge = Some(Empty {}),
        DefaultBinding::Masquerade => interface.masquerade = Some(Empty {}),
    }
    spec.domain.devices.interfaces.push(interface);
}

/// A disk for each volume without one, and each disk's target and bus.
fn disks(spec: &mut VirtualMachineInstanceSpec) {
    let disks = &mut spec.domain.devices.disks;
    for volume in &spec.volumes {
        if !disks.iter().any(|d| d.name == volume.name) {
            disks.push(Disk {
                name: volume.name.clone(),
                ..Disk::default()
            });
        }
    }
    for disk in disks.iter_mut() {
        if disk.disk.is_none() && disk.cdrom.is_none() {
            disk.disk = Some(DiskTarget::default());
        }
        for (target, bus) in [(&mut disk.disk, "virtio"), (&mut disk.cdrom, "sata")] {
            if let Some(target) = target {
                target.bus.get_or_insert_with(|| bus.into());
            }
        }
    }
}

/// A CPU quantity (`2`, `1500m`) as whole vCPUs, rounded up.
fn parse_cpus(text: &str) -> Option<u32> {
    let millis = match text.strip_suffix('m') {
        Some(millis) => millis.parse::<u64>().ok()?,
        None => text.parse::<u64>().ok()?.checked_mul(1000)?,
    };
    u32::try_from(millis.div_ceil(1000)).ok().filter(|&n| n > 0)
}

impl RunStrategy {
    /// The name as written in a manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStrategy::Always => "Always",
            RunStrategy::RerunOnFailure => "RerunOnFailure",
            RunStrategy::Once => "Once",
            RunStrategy::Manual => "Manual",
            RunStrategy::Halted => "Halted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BARE: &str = r##"
apiVersion: vmlet.dev/v1alpha1
kind: VirtualMachine
metadata: {name: bare}
spec:
  running: true
  template:
    metadata: {creationTimestamp: null}
    spec:
      domain:
        machine: {type: ""}
        resources: {requests: {memory: 128Mi, cpu: 1500m}}
        devices:
          disks: [{name: root}, {name: iso, cdrom: {}}]
      volumes:
      - {name: root, containerDisk: {image: example.org/disk:1}}
      - {name: iso, containerDisk: {image: example.org/iso:1}}
      - {name: init, cloudInitNoCloud: {userData: "#cloud-config"}}
"##;

    fn bare() -> VirtualMachine {
        serde_yaml::from_str(BARE).unwrap()
    }

    #[test]
    fn a_bare_vm_gets_kubevirts_defaults() {
        let mut vm = bare();
        apply(&mut vm, &ClusterDefaults::default());
        assert_eq!(
            (vm.spec.run_strategy, vm.spec.running),
            (Some(RunStrategy::Always), None)
        );
        let spec = &vm.spec.template.spec;
        assert_eq!(spec.networks[0].name, "default");
        assert!(spec.domain.devices.interfaces[0].bridge.is_some());
        let disks: Vec<_> = spec
            .domain
            .devices
            .disks
            .iter()
            .map(|d| {
                let (kind, target) = match (&d.disk, &d.cdrom) {
                    (Some(t), None) => ("disk", t),
                    (None, Some(t)) => ("cdrom", t),
                    _ => panic!("{d:?}"),
                };
                format!("{} {kind} {}", d.name, target.bus.as_deref().unwrap_or(""))
            })
            .collect();
        assert_eq!(disks, ["root disk virtio", "iso cdrom sata", "init disk virtio"]);
        let domain = &spec.domain;
        assert_eq!(domain.machine.as_ref().unwrap().machine_type, "q35");
        let cpu = domain.cpu.as_ref().unwrap();
        assert_eq!((cpu.sockets, cpu.cores, cpu.threads), (Some(2), Some(1), Some(1)));
        assert_eq!(domain.memory.as_ref().unwrap().guest.as_deref(), Some("128Mi"));
        assert!(
            domain
                .firmware
                .as_ref()
                .unwrap()
                .bootloader
                .as_ref()
                .unwrap()
                .bios
                .is_some()
        );
        assert!(FeatureState::on(domain.features.as_ref().unwrap().acpi.as_ref()));
        assert!(domain.clock.as_ref().unwrap().utc.is_some());
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn defaults_are_idempotent_and_keep_what_is_given() {
        let mut once = bare();
        apply(&mut once, &ClusterDefaults::default());
        let mut twice = once.clone();
        apply(&mut twice, &ClusterDefaults::default());
        assert_eq!(once, twice);

        let mut given = bare();
        given.spec.running = Some(false);
        given.spec.template.spec.domain.cpu = Some(Cpu {
            cores: Some(4),
            ..Cpu::default()
        });
        apply(&mut given, &ClusterDefaults::default());
        assert_eq!(given.spec.run_strategy, Some(RunStrategy::Halted));
        let cpu = given.spec.template.spec.domain.cpu.unwrap();
        assert_eq!((cpu.sockets, cpu.cores, cpu.threads), (Some(1), Some(4), Some(1)));
    }

    #[test]
    fn the_cluster_chooses_the_default_binding() {
        let mut vm = bare();
        let masquerade = ClusterDefaults {
            network_binding: "masquerade".parse().unwrap(),
        };
        apply(&mut vm, &masquerade);
        assert!(vm.spec.template.spec.domain.devices.interfaces[0].masquerade.is_some());
        assert!("tap".parse::<DefaultBinding>().is_err());
    }

    #[test]
    fn running_and_run_strategy_together_are_left_for_validation_to_refuse() {
        let mut vm = bare();
        vm.spec.run_strategy = Some(RunStrategy::Manual);
        apply(&mut vm, &ClusterDefaults::default());
        assert_eq!(
            (vm.spec.run_strategy, vm.spec.running),
            (Some(RunStrategy::Manual), Some(true))
        );
        let problems = vm.validate().unwrap_err().0;
        assert_eq!(problems[0].field, "spec.running");
    }

    #[test]
    fn cpu_quantities_round_up_to_whole_vcpus() {
        assert_eq!(parse_cpus("2"), Some(2));
        assert_eq!(parse_cpus("1500m"), Some(2));
        assert_eq!(parse_cpus("100m"), Some(1));
        assert_eq!(parse_cpus("0"), None);
        assert_eq!(parse_cpus("x"), None);
    }
}
