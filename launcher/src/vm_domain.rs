//! From the VM spec to the libvirt domain: pure, so every choice it makes is tested without libvirt.

use std::path::Path;

use uuid::Uuid;

use crate::spec::VmSpec;
use crate::storage::Storage;
use vmlet_domain::{Accel, ConsolePaths, DEFAULT_MACHINE, DomainSpec, InterfaceSpec};

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
        console: ConsolePaths::in_dir(run_dir),
        vnc_socket: Some(run_dir.join("vnc.sock")),
        guest_agent_socket: Some(run_dir.join("guest-agent.sock")),
    })
}

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
        assert_eq!(d.console.log, Path::new("/run/vmlet/console.log"));
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
}
