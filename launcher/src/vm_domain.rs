//! From the VM spec to the libvirt domain: pure, so every choice it makes is tested without libvirt.

use std::path::Path;

use uuid::Uuid;

use vmlet_control::RunDir;

use crate::spec::VmSpec;
use crate::storage::Storage;
use vmlet_api::{FeatureState, HyperV, VirtualMachineInstanceSpec};
use vmlet_domain::{
    Accel, Clock, ClockOffset, ConsolePaths, CpuTopology, DEFAULT_MACHINE, DomainSpec, Features, HypervFeature,
    InterfaceSpec, NicModel, Platform, Timer,
};

/// Where vmlet's own UUIDs live, so a VM's UUID follows from its identity and survives a launcher restart.
const UUID_NAMESPACE: Uuid = Uuid::from_u128(0x6f0e_5a2c_9d1b_4c4e_8f3a_7b52_1e9d_0c11);

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VmDomainError {
    #[error("firmware.uuid {0:?} is not a UUID")]
    InvalidUuid(String),
}

/// Builds the domain for `vm` with its NIC on `interface`, its disks and firmware from `storage`, its files under
/// `run_dir`.
pub fn plan(
    vm: &VmSpec,
    interface: InterfaceSpec,
    storage: Storage,
    accel: Accel,
    run_dir: &Path,
) -> Result<DomainSpec, VmDomainError> {
    let spec = &vm.spec;
    let devices = &spec.domain.devices;
    let files = RunDir::new(run_dir);
    let firmware = spec.domain.firmware.as_ref();
    let uuid = match firmware.and_then(|f| f.uuid.as_deref()) {
        Some(text) => Uuid::parse_str(text).map_err(|_| VmDomainError::InvalidUuid(text.to_owned()))?,
        None => {
            let identity = vm
                .uid
                .clone()
                .unwrap_or_else(|| format!("{}/{}", vm.namespace.as_deref().unwrap_or(""), vm.name));
            Uuid::new_v5(&UUID_NAMESPACE, identity.as_bytes())
        }
    };
    Ok(DomainSpec {
        name: vm.name.clone(),
        uuid,
        vcpus: spec.vcpus(),
        memory_mib: spec.guest_memory_bytes().unwrap_or(0).div_ceil(1 << 20),
        machine: spec
            .domain
            .machine
            .as_ref()
            .map_or(DEFAULT_MACHINE.to_owned(), |m| m.machine_type.clone()),
        accel,
        firmware: storage.firmware,
        boot: storage.boot,
        disks: storage.disks,
        interfaces: vec![interface],
        console: (devices.autoattach_serial_console != Some(false)).then(|| console(&files)),
        platform: platform(spec),
        vnc_socket: (devices.autoattach_graphics_device != Some(false)).then(|| files.vnc_socket()),
        guest_agent_socket: Some(files.guest_agent_socket()),
    })
}

/// The serial console's socket and log in the run directory.
pub fn console(run_dir: &RunDir) -> ConsolePaths {
    ConsolePaths {
        socket: run_dir.console_socket(),
        log: run_dir.console_log(),
    }
}

/// The guest NIC's model: the first interface's (validation allows virtio, e1000 and e1000e).
pub fn nic_model(spec: &VirtualMachineInstanceSpec) -> NicModel {
    match spec.domain.devices.interfaces.first().and_then(|i| i.model.as_deref()) {
        Some("e1000") => NicModel::E1000,
        Some("e1000e") => NicModel::E1000e,
        _ => NicModel::Virtio,
    }
}

/// Topology, CPU model, features, clock and SMBIOS serial, from a spec with its defaults applied.
fn platform(spec: &VirtualMachineInstanceSpec) -> Platform {
    let domain = &spec.domain;
    let mut platform = Platform::default();
    if let Some(cpu) = &domain.cpu {
        if cpu.sockets.is_some() || cpu.cores.is_some() || cpu.threads.is_some() {
            platform.topology = Some(CpuTopology {
                sockets: cpu.sockets.unwrap_or(1),
                cores: cpu.cores.unwrap_or(1),
                threads: cpu.threads.unwrap_or(1),
            });
        }
        platform.cpu_model = cpu.model.clone();
    }
    if let Some(features) = &domain.features {
        platform.features = Features {
            acpi: FeatureState::on(features.acpi.as_ref()),
            apic: FeatureState::on(features.apic.as_ref()),
            smm: FeatureState::on(features.smm.as_ref()),
            hyperv: features.hyperv.as_ref().map(hyperv).unwrap_or_default(),
        };
    }
    if let Some(clock) = &domain.clock {
        let offset = match (&clock.timezone, &clock.utc) {
            (Some(zone), _) => ClockOffset::Timezone(zone.clone()),
            (None, utc) => ClockOffset::Utc {
                adjustment: utc.as_ref().and_then(|u| u.offset_seconds).unwrap_or(0),
            },
        };
        let timers = clock.timer.as_ref().map_or_else(Vec::new, |t| {
            // libvirt's names for KubeVirt's kvm and hyperv timers.
            [
                ("rtc", &t.rtc),
                ("pit", &t.pit),
                ("hpet", &t.hpet),
                ("kvmclock", &t.kvm),
                ("hypervclock", &t.hyperv),
            ]
            .into_iter()
            .filter_map(|(name, timer)| {
                let timer = timer.as_ref()?;
                Some(Timer {
                    name: name.into(),
                    present: timer.present,
                    tick_policy: timer.tick_policy.clone(),
                    track: timer.track.clone(),
                })
            })
            .collect()
        });
        platform.clock = Clock { offset, timers };
    }
    platform.smbios_serial = domain.firmware.as_ref().and_then(|f| f.serial.clone());
    platform
}

/// The enlightenments turned on, in libvirt's order.
fn hyperv(h: &HyperV) -> Vec<HypervFeature> {
    let spinlocks = h
        .spinlocks
        .as_ref()
        .filter(|s| s.enabled != Some(false))
        .map(|s| HypervFeature::Spinlocks(s.spinlocks.unwrap_or(DEFAULT_SPINLOCK_RETRIES)));
    [(&h.relaxed, HypervFeature::Relaxed), (&h.vapic, HypervFeature::Vapic)]
        .into_iter()
        .filter(|(state, _)| FeatureState::on(state.as_ref()))
        .map(|(_, feature)| feature)
        .chain(spinlocks)
        .chain(
            [
                (&h.vpindex, HypervFeature::Vpindex),
                (&h.runtime, HypervFeature::Runtime),
                (&h.synic, HypervFeature::Synic),
                (&h.synictimer, HypervFeature::Stimer),
                (&h.reset, HypervFeature::Reset),
                (&h.frequencies, HypervFeature::Frequencies),
                (&h.reenlightenment, HypervFeature::Reenlightenment),
                (&h.tlbflush, HypervFeature::Tlbflush),
                (&h.ipi, HypervFeature::Ipi),
            ]
            .into_iter()
            .filter(|(state, _)| FeatureState::on(state.as_ref()))
            .map(|(_, feature)| feature),
        )
        .collect()
}

/// KubeVirt's spinlock retries when the manifest gives none.
const DEFAULT_SPINLOCK_RETRIES: u32 = 8191;

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use vmlet_dhcp::MacAddr;
    use vmlet_domain::{Boot, Firmware};

    use super::*;
    use crate::spec::test_vm;

    fn vm() -> VmSpec {
        test_vm(
            r#"
metadata: {name: vm1, namespace: default, uid: 0d4c8f2e-8e2b-4c7e-9d3c-3a1f1e2b7c11}
spec:
  template:
    spec:
      domain:
        cpu: {cores: 2}
        memory: {guest: 100Mi}
        firmware: {kernelBoot: {kernelArgs: "console=ttyS0", hostPath: {kernelPath: /g/vmlinux}}}
        devices:
          interfaces: [{name: default, bridge: {}}]
      networks: [{name: default, pod: {}}]
"#,
        )
    }

    fn nic() -> InterfaceSpec {
        InterfaceSpec {
            tap: "tap-eth0".into(),
            mac: MacAddr([2, 0x42, 10, 244, 1, 7]),
            mtu: Some(1400),
            model: NicModel::Virtio,
        }
    }

    fn storage() -> Storage {
        Storage {
            disks: Vec::new(),
            firmware: Firmware::Bios,
            boot: Boot::Kernel {
                kernel: PathBuf::from("/g/vmlinux"),
                initrd: None,
                cmdline: "console=ttyS0".into(),
            },
        }
    }

    #[test]
    fn the_vm_becomes_a_domain() {
        let d = plan(&vm(), nic(), storage(), Accel::Tcg, Path::new("/run/vmlet")).unwrap();
        assert_eq!(
            (d.name.as_str(), d.vcpus, d.memory_mib, d.machine.as_str()),
            ("vm1", 2, 100, "q35")
        );
        assert_eq!(d.accel, Accel::Tcg);
        assert_eq!(d.boot, storage().boot);
        assert_eq!(d.interfaces, [nic()]);
        assert_eq!(d.console.map(|c| c.log), Some(PathBuf::from("/run/vmlet/console.log")));
        assert_eq!(
            d.guest_agent_socket.as_deref(),
            Some(Path::new("/run/vmlet/guest-agent.sock"))
        );
    }

    #[test]
    fn the_uuid_follows_from_the_vm_and_survives_a_restart() {
        let uuid =
            |vm: &VmSpec, run_dir: &str| plan(vm, nic(), storage(), Accel::Tcg, Path::new(run_dir)).unwrap().uuid;
        assert_eq!(uuid(&vm(), "/r"), uuid(&vm(), "/other"));
        let mut other = vm();
        other.uid = Some("another".into());
        assert_ne!(uuid(&other, "/r"), uuid(&vm(), "/r"));
    }

    #[test]
    fn kubevirts_platform_fields_reach_the_domain() {
        let vm = test_vm(
            r#"
metadata: {name: win, namespace: default}
spec:
  template:
    spec:
      domain:
        cpu: {cores: 2, model: host-model}
        memory: {guest: 100Mi}
        firmware: {serial: SN-7, kernelBoot: {hostPath: {kernelPath: /g/vmlinux}}}
        features:
          acpi: {}
          apic: {enabled: false}
          smm: {enabled: false}
          hyperv: {relaxed: {}, vapic: {enabled: false}, spinlocks: {spinlocks: 4096}, synictimer: {}}
        clock:
          timezone: America/New_York
          timer: {hpet: {present: false}, kvm: {}, rtc: {tickPolicy: catchup, track: guest}}
        devices:
          autoattachGraphicsDevice: false
          autoattachSerialConsole: false
          interfaces: [{name: default, masquerade: {}, model: e1000}]
      networks: [{name: default, pod: {}}]
"#,
        );
        let d = plan(&vm, nic(), storage(), Accel::Kvm, Path::new("/run/vmlet")).unwrap();
        let p = &d.platform;
        assert_eq!(
            p.topology,
            Some(CpuTopology {
                sockets: 1,
                cores: 2,
                threads: 1
            })
        );
        assert_eq!(p.cpu_model.as_deref(), Some("host-model"));
        assert_eq!((p.features.acpi, p.features.apic, p.features.smm), (true, false, false));
        assert_eq!(
            p.features.hyperv,
            [
                HypervFeature::Relaxed,
                HypervFeature::Spinlocks(4096),
                HypervFeature::Stimer
            ]
        );
        assert_eq!(p.clock.offset, ClockOffset::Timezone("America/New_York".into()));
        let timers: Vec<_> = p.clock.timers.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(timers, ["rtc", "hpet", "kvmclock"]);
        assert_eq!(p.smbios_serial.as_deref(), Some("SN-7"));
        assert_eq!((&d.console, &d.vnc_socket), (&None, &None));
        assert_eq!(nic_model(&vm.spec), NicModel::E1000);
        d.to_xml().unwrap();
    }

    #[test]
    fn a_vm_with_only_defaults_gets_vmlets_platform() {
        let d = plan(&vm(), nic(), storage(), Accel::Tcg, Path::new("/run/vmlet")).unwrap();
        assert_eq!((d.platform.features.acpi, d.platform.features.apic), (true, true));
        let timers: Vec<_> = d.platform.clock.timers.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(timers, ["rtc", "pit", "hpet"]);
        assert!(d.console.is_some() && d.vnc_socket.is_some());
    }
}
