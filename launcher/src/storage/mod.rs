//! The VM's disks and firmware, made ready before the launcher touches the pod network, so that a volume the pod
//! cannot serve fails the launch with the volume named and nothing else changed.
//!
//! What the pod provides is found through [`PodVolumes`] (the same layout on Kubernetes and in standalone mode).
//! The launcher writes only in its run directory: a qcow2 overlay per containerDisk (the image itself is never
//! written, nor copied), empty disks, cloud-init seeds and the EFI variable store. A persistent volume claim's
//! `disk.img` is made once, sparse, when the claim holds none yet (as KubeVirt does).

mod cloud_init;
mod disk;
mod overlay;

#[cfg(test)]
mod tests;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use vmlet_api::{CloudInitKind, HostDiskType, Volume, parse_quantity};
use vmlet_control::PodVolumes;
use vmlet_control::pod_volumes::CLAIM_DISK_FILE;
use vmlet_domain::{Boot, DiskFormat, DiskSource, DiskSpec, Firmware};

use crate::spec::VmSpec;

pub use overlay::OverlayError;

/// Debian's OVMF builds (package `ovmf`): the code, and the variable store each guest gets a copy of. The Secure
/// Boot build enforces signatures with Microsoft's keys enrolled, as on most PCs.
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const OVMF_SECURE_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
const OVMF_SECURE_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

/// A filesystem claim's disk leaves this share of the free space unused, for the filesystem's own needs (KubeVirt
/// keeps 5.5 %).
const CLAIM_RESERVE_PERMILLE: u64 = 55;

/// What the domain needs of storage: its disks in the spec's order, its firmware and what it boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Storage {
    pub disks: Vec<DiskSpec>,
    pub firmware: Firmware,
    pub boot: Boot,
}

/// A volume the launcher cannot serve, named.
#[derive(Debug, thiserror::Error)]
#[error("volume {volume:?}: {problem}")]
pub struct StorageError {
    pub volume: String,
    pub problem: Problem,
}

#[derive(Debug, thiserror::Error)]
pub enum Problem {
    #[error("the pod provides no data for it at {}", .0.display())]
    NotProvided(PathBuf),
    #[error("the image has no disk under /disk")]
    NoDisk,
    #[error("the image has several disks under /disk ({0}); name one with containerDisk.path")]
    SeveralDisks(String),
    #[error("the image has no file {}", .0.display())]
    NoSuchFile(PathBuf),
    #[error("{} is neither a folder nor a block device", .0.display())]
    NotAClaim(PathBuf),
    #[error("cannot read {}", .0.display())]
    Read(PathBuf, #[source] std::io::Error),
    #[error("cannot create {}", .0.display())]
    Create(PathBuf, #[source] std::io::Error),
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    #[error("the Secret mounted at {} has no key {keys}", .dir.display())]
    SecretKey { dir: PathBuf, keys: String },
    #[error("not valid base64: {0}")]
    Base64(String),
    #[error(transparent)]
    CloudInit(#[from] vmlet_cloudinit::Error),
    #[error("UEFI firmware {} is missing (Debian's package ovmf)", .0.display())]
    NoFirmware(PathBuf),
}

/// The volume name used for errors about the kernel of `kernelBoot.container` and about the firmware.
const KERNEL_BOOT: &str = "kernelBoot.container";
const FIRMWARE: &str = "firmware.bootloader.efi";

/// Finds, checks and makes everything the VM's disks and firmware need, in the spec's order.
pub fn prepare(vm: &VmSpec, volumes: &PodVolumes, run_dir: &Path) -> Result<Storage, StorageError> {
    let spec = &vm.spec;
    let mut disks = Vec::new();
    for disk in &spec.domain.devices.disks {
        // Validation guarantees a volume for every disk.
        let Some(volume) = spec.volumes.iter().find(|v| v.name == disk.name) else {
            continue;
        };
        let failed = |problem| StorageError {
            volume: volume.name.clone(),
            problem,
        };
        let source = source(vm, volume, volumes, run_dir).map_err(failed)?;
        disks.push(disk::spec(disk, source));
    }
    let firmware = firmware(vm, run_dir).map_err(|problem| StorageError {
        volume: FIRMWARE.into(),
        problem,
    })?;
    let boot = boot(vm, volumes).map_err(|problem| StorageError {
        volume: KERNEL_BOOT.into(),
        problem,
    })?;
    Ok(Storage { disks, firmware, boot })
}

fn source(vm: &VmSpec, volume: &Volume, volumes: &PodVolumes, run_dir: &Path) -> Result<DiskSource, Problem> {
    if let Some(container) = &volume.container_disk {
        let root = volumes.disk(&volume.name);
        let image = container_disk_file(&root, container.path.as_deref())?;
        let overlay = run_dir.join("disks").join(format!("{}.qcow2", volume.name));
        overlay::ensure(&overlay, &image)?;
        return Ok(DiskSource::File {
            path: overlay,
            format: DiskFormat::Qcow2,
        });
    }
    if volume.persistent_volume_claim.is_some() {
        return claim(&volumes.disk(&volume.name));
    }
    if let Some(host) = &volume.host_disk {
        let path = PathBuf::from(&host.path);
        if host.path.starts_with("/dev/") {
            return Ok(DiskSource::Block { path });
        }
        if host.disk_type == HostDiskType::DiskOrCreate {
            let bytes = host
                .capacity
                .as_deref()
                .and_then(|c| parse_quantity(c).ok())
                .unwrap_or(0);
            create_sparse(&path, bytes)?;
        }
        let format = if host.path.ends_with(".qcow2") {
            DiskFormat::Qcow2
        } else {
            DiskFormat::Raw
        };
        return Ok(DiskSource::File { path, format });
    }
    if let Some(empty) = &volume.empty_disk {
        let path = run_dir.join("disks").join(format!("{}.img", volume.name));
        create_sparse(&path, parse_quantity(&empty.capacity).unwrap_or(0))?;
        return Ok(DiskSource::File {
            path,
            format: DiskFormat::Raw,
        });
    }
    // Validation guarantees one source; what is left is cloud-init's.
    let kind = if volume.cloud_init_no_cloud.is_some() {
        CloudInitKind::NoCloud
    } else {
        CloudInitKind::ConfigDrive
    };
    Ok(DiskSource::File {
        path: cloud_init::seed_image(vm, volume, kind, volumes, run_dir)?,
        format: DiskFormat::Raw,
    })
}

/// The disk file of a containerDisk whose image root is `root`: `path` inside it, else the one file under `disk/`.
fn container_disk_file(root: &Path, path: Option<&str>) -> Result<PathBuf, Problem> {
    if !root.is_dir() {
        return Err(Problem::NotProvided(root.to_owned()));
    }
    if let Some(path) = path {
        let file = root.join(path.trim_start_matches('/'));
        return if file.is_file() {
            Ok(file)
        } else {
            Err(Problem::NoSuchFile(PathBuf::from(path)))
        };
    }
    let dir = root.join("disk");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Problem::NoDisk),
        Err(e) => return Err(Problem::Read(dir, e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Problem::Read(dir.clone(), e))?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    match files.len() {
        0 => Err(Problem::NoDisk),
        1 => Ok(files.remove(0)),
        _ => Err(Problem::SeveralDisks(
            files
                .iter()
                .filter_map(|f| f.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// A persistent volume claim: its block device, or `disk.img` in its folder, made when missing.
fn claim(path: &Path) -> Result<DiskSource, Problem> {
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Problem::NotProvided(path.to_owned())),
        Err(e) => return Err(Problem::Read(path.to_owned(), e)),
    };
    if metadata.file_type().is_block_device() {
        return Ok(DiskSource::Block { path: path.to_owned() });
    }
    if !metadata.is_dir() {
        return Err(Problem::NotAClaim(path.to_owned()));
    }
    let file = path.join(CLAIM_DISK_FILE);
    if !file.exists() {
        let free = nix::sys::statvfs::statvfs(path)
            .map(|s| s.blocks_available() * s.fragment_size())
            .map_err(|e| Problem::Read(path.to_owned(), e.into()))?;
        let bytes = free - free * CLAIM_RESERVE_PERMILLE / 1000;
        create_sparse(&file, bytes & !((1 << 20) - 1))?;
    }
    let format = overlay::format_of(&file).map_err(|e| Problem::Read(file.clone(), e))?;
    Ok(DiskSource::File { path: file, format })
}

fn firmware(vm: &VmSpec, run_dir: &Path) -> Result<Firmware, Problem> {
    let efi = vm
        .spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.bootloader.as_ref())
        .and_then(|b| b.efi.as_ref());
    let Some(efi) = efi else {
        return Ok(Firmware::Bios);
    };
    // KubeVirt's default: Secure Boot unless turned off.
    let secure_boot = efi.secure_boot.unwrap_or(true);
    let (code, vars_template) = if secure_boot {
        (OVMF_SECURE_CODE, OVMF_SECURE_VARS)
    } else {
        (OVMF_CODE, OVMF_VARS)
    };
    for file in [code, vars_template] {
        if !Path::new(file).is_file() {
            return Err(Problem::NoFirmware(file.into()));
        }
    }
    Ok(Firmware::Efi {
        code: code.into(),
        vars_template: vars_template.into(),
        vars: run_dir.join("efi-vars.fd"),
        secure_boot,
    })
}

fn boot(vm: &VmSpec, volumes: &PodVolumes) -> Result<Boot, Problem> {
    let Some(kernel_boot) = vm.spec.domain.firmware.as_ref().and_then(|f| f.kernel_boot.as_ref()) else {
        return Ok(Boot::Disk);
    };
    let cmdline = kernel_boot.kernel_args.clone().unwrap_or_default();
    if let Some(host) = &kernel_boot.host_path {
        return Ok(Boot::Kernel {
            kernel: PathBuf::from(&host.kernel_path),
            initrd: host.initrd_path.as_ref().map(PathBuf::from),
            cmdline,
        });
    }
    // Validation guarantees one source; what is left is the container's.
    let Some(container) = &kernel_boot.container else {
        return Ok(Boot::Disk);
    };
    let root = volumes.kernel_image();
    if !root.is_dir() {
        return Err(Problem::NotProvided(root));
    }
    let file = |path: &str| {
        let file = root.join(path.trim_start_matches('/'));
        if file.is_file() {
            Ok(file)
        } else {
            Err(Problem::NoSuchFile(path.into()))
        }
    };
    Ok(Boot::Kernel {
        kernel: file(&container.kernel_path)?,
        initrd: container.initrd_path.as_deref().map(file).transpose()?,
        cmdline,
    })
}

/// Makes a sparse file of `bytes` unless one exists: a disk is never wiped by a restart.
fn create_sparse(path: &Path, bytes: u64) -> Result<(), Problem> {
    if path.exists() {
        return Ok(());
    }
    let create = |e| Problem::Create(path.to_owned(), e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(create)?;
    }
    let file = std::fs::File::create_new(path).map_err(create)?;
    file.set_len(bytes).map_err(create)
}
