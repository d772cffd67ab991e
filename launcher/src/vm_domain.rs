//! From the VM spec to the libvirt domain: pure, so every choice it makes is tested without libvirt.

use std::path::{Path, PathBuf};

use uuid::Uuid;
use vmlet_api::{HostDiskType, Volume, parse_quantity};

use crate::spec::VmSpec;
use vmlet_domain::InterfaceSpec;
use vmlet_domain::{
    Accel, Boot, ConsolePaths, DEFAULT_MACHINE, DiskFormat, DiskMedia, DiskSource, DiskSpec, DomainSpec,
};

/// Where vmlet's own UUIDs live, so a VM's UUID follows from its identity and survives a launcher restart.
const UUID_NAMESPACE: Uuid = Uuid::from_u128(0x6f0e_5a2c_9d1b_4c4e_8f3a_7b52_1e9d_0c11);

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VmDomainError {
    #[error("volume {volume:?}: {source_kind} volumes are not supported by this launcher yet")]
    UnsupportedVolume { volume: String, source_kind: &'static str },
    #[error("firmware.kernelBoot.container needs the image mounted by the pod, which this launcher cannot do yet")]
    KernelFromContainer,
    #[error("firmware.uuid {0:?} is not a UUID")]
    InvalidUuid(String),
}

/// An empty disk the launcher must create before the domain starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmptyDiskFile {
    pub path: PathBuf,
    pub bytes: u64,
}

/// The domain, and the empty disks to create for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainPlan {
    pub domain: DomainSpec,
    pub empty_disks: Vec<EmptyDiskFile>,
}

/// Builds the domain for `vm` with its NIC on `interface`, its files under `run_dir`.
pub fn plan(vm: &VmSpec, interface: InterfaceSpec, accel: Accel, run_dir: &Path) -> Result<DomainPlan, VmDomainError> {
    let spec = &vm.spec;
    let firmware = spec.domain.firmware.as_ref();
    let boot = match firmware.and_then(|f| f.kernel_boot.as_ref()) {
        Some(kernel_boot) => match (&kernel_boot.host_path, &kernel_boot.container) {
            (Some(host), _) => Boot::Kernel {
                kernel: PathBuf::from(&host.kernel_path),
                initrd: host.initrd_path.as_ref().map(PathBuf::from),
                cmdline: kernel_boot.kernel_args.clone().unwrap_or_default(),
            },
            (None, _) => return Err(VmDomainError::KernelFromContainer),
        },
        None => Boot::Disk,
    };
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

    let mut disks = Vec::new();
    let mut empty_disks = Vec::new();
    // Disks in the spec's order: the guest sees them as vda, vdb, ... in that order.
    for disk in &spec.domain.devices.disks {
        let Some(volume) = spec.volumes.iter().find(|v| v.name == disk.name) else {
            continue; // validation guarantees a volume; nothing to attach otherwise
        };
        let target = disk.cdrom.as_ref().or(disk.disk.as_ref());
        let media = if disk.cdrom.is_some() {
            DiskMedia::Cdrom
        } else {
            DiskMedia::Disk
        };
        let readonly = target.and_then(|t| t.readonly).unwrap_or(media == DiskMedia::Cdrom);
        let source = disk_source(volume, run_dir, &mut empty_disks)?;
        disks.push(DiskSpec {
            source,
            media,
            readonly,
        });
    }

    let domain = DomainSpec {
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
        boot,
        disks,
        interfaces: vec![interface],
        console: ConsolePaths::in_dir(run_dir),
        vnc_socket: Some(run_dir.join("vnc.sock")),
        guest_agent_socket: Some(run_dir.join("guest-agent.sock")),
    };
    Ok(DomainPlan { domain, empty_disks })
}

fn disk_source(
    volume: &Volume,
    run_dir: &Path,
    empty_disks: &mut Vec<EmptyDiskFile>,
) -> Result<DiskSource, VmDomainError> {
    let unsupported = |source_kind| VmDomainError::UnsupportedVolume {
        volume: volume.name.clone(),
        source_kind,
    };
    if let Some(host) = &volume.host_disk {
        let path = PathBuf::from(&host.path);
        return Ok(if host.path.starts_with("/dev/") {
            DiskSource::Block { path }
        } else {
            if host.disk_type == HostDiskType::DiskOrCreate {
                let bytes = host
                    .capacity
                    .as_deref()
                    .and_then(|c| parse_quantity(c).ok())
                    .unwrap_or(0);
                empty_disks.push(EmptyDiskFile {
                    path: path.clone(),
                    bytes,
                });
            }
            let format = if host.path.ends_with(".qcow2") {
                DiskFormat::Qcow2
            } else {
                DiskFormat::Raw
            };
            DiskSource::File { path, format }
        });
    }
    if let Some(empty) = &volume.empty_disk {
        let path = run_dir.join("disks").join(format!("{}.img", volume.name));
        let bytes = parse_quantity(&empty.capacity).unwrap_or(0);
        empty_disks.push(EmptyDiskFile {
            path: path.clone(),
            bytes,
        });
        return Ok(DiskSource::File {
            path,
            format: DiskFormat::Raw,
        });
    }
    Err(if volume.container_disk.is_some() {
        unsupported("containerDisk")
    } else if volume.persistent_volume_claim.is_some() {
        unsupported("persistentVolumeClaim")
    } else {
        unsupported("cloudInitNoCloud")
    })
}

#[cfg(test)]
mod tests {
    use vmlet_dhcp::MacAddr;

    use super::*;

    fn vm(extra_spec: &str) -> VmSpec {
        let yaml = format!(
            r#"
metadata: {{name: vm1, namespace: default, uid: 0d4c8f2e-8e2b-4c7e-9d3c-3a1f1e2b7c11}}
spec:
  template:
    spec:
      domain:
        cpu: {{cores: 2}}
        memory: {{guest: 100Mi}}
        firmware: {{kernelBoot: {{kernelArgs: "console=ttyS0", hostPath: {{kernelPath: /g/vmlinux, initrdPath: /g/initrd}}}}}}
        devices:
          interfaces: [{{name: default, bridge: {{}}}}]
{extra_spec}
      networks: [{{name: default, pod: {{}}}}]
"#
        );
        let document = format!("apiVersion: vmlet.dev/v1alpha1\nkind: VirtualMachine\n{yaml}");
        let vm: vmlet_api::VirtualMachine = serde_yaml::from_str(&document).unwrap();
        VmSpec {
            name: vm.metadata.name.unwrap(),
            namespace: vm.metadata.namespace,
            uid: vm.metadata.uid,
            spec: vm.spec.template.spec,
        }
    }

    fn nic() -> InterfaceSpec {
        InterfaceSpec {
            tap: "tap-eth0".into(),
            mac: MacAddr([2, 0x42, 10, 244, 1, 7]),
            mtu: Some(1400),
        }
    }

    #[test]
    fn kernel_boot_vm_becomes_a_domain() {
        let plan = plan(&vm(""), nic(), Accel::Tcg, Path::new("/run/vmlet")).unwrap();
        let d = plan.domain;
        assert_eq!(
            (d.name.as_str(), d.vcpus, d.memory_mib, d.machine.as_str()),
            ("vm1", 2, 100, "q35")
        );
        assert_eq!(d.accel, Accel::Tcg);
        assert_eq!(
            d.boot,
            Boot::Kernel {
                kernel: "/g/vmlinux".into(),
                initrd: Some("/g/initrd".into()),
                cmdline: "console=ttyS0".into()
            }
        );
        assert_eq!(d.interfaces, [nic()]);
        assert_eq!(d.console.log, Path::new("/run/vmlet/console.log"));
        assert!(d.disks.is_empty() && plan.empty_disks.is_empty());
    }

    #[test]
    fn the_uuid_follows_from_the_vm_and_survives_a_restart() {
        let a = plan(&vm(""), nic(), Accel::Tcg, Path::new("/r")).unwrap().domain.uuid;
        let b = plan(&vm(""), nic(), Accel::Kvm, Path::new("/other"))
            .unwrap()
            .domain
            .uuid;
        assert_eq!(a, b);
        let mut other = vm("");
        other.uid = Some("another".into());
        assert_ne!(plan(&other, nic(), Accel::Tcg, Path::new("/r")).unwrap().domain.uuid, a);
    }

    #[test]
    fn disks_in_order_with_empty_ones_to_create() {
        let disks = r#"          disks: [{name: root, disk: {}}, {name: scratch, disk: {}}, {name: iso, cdrom: {}}]
      volumes:
      - {name: root, hostDisk: {path: /images/root.qcow2, type: Disk}}
      - {name: scratch, emptyDisk: {capacity: 1Gi}}
      - {name: iso, hostDisk: {path: /dev/sr0, type: Disk}}"#;
        let plan = plan(&vm(disks), nic(), Accel::Tcg, Path::new("/run/vmlet")).unwrap();
        let d = &plan.domain.disks;
        assert_eq!(
            d[0].source,
            DiskSource::File {
                path: "/images/root.qcow2".into(),
                format: DiskFormat::Qcow2
            }
        );
        assert_eq!((d[0].media, d[0].readonly), (DiskMedia::Disk, false));
        assert_eq!(
            d[1].source,
            DiskSource::File {
                path: "/run/vmlet/disks/scratch.img".into(),
                format: DiskFormat::Raw
            }
        );
        assert_eq!(
            d[2].source,
            DiskSource::Block {
                path: "/dev/sr0".into()
            }
        );
        assert_eq!((d[2].media, d[2].readonly), (DiskMedia::Cdrom, true));
        assert_eq!(
            plan.empty_disks,
            [EmptyDiskFile {
                path: "/run/vmlet/disks/scratch.img".into(),
                bytes: 1 << 30
            }]
        );
    }

    #[test]
    fn what_cannot_be_run_yet_is_named() {
        let disks = r#"          disks: [{name: root, disk: {}}]
      volumes:
      - {name: root, containerDisk: {image: quay.io/containerdisks/fedora}}"#;
        let err = plan(&vm(disks), nic(), Accel::Tcg, Path::new("/r")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "volume \"root\": containerDisk volumes are not supported by this launcher yet"
        );
    }
}
