//! The VM as libvirt sees it: [`DomainSpec`], the launcher's description of one domain, its domain XML and the
//! [`DomainState`]s it goes through; and the [`protocol`] in which `vmlet-launcher` asks `vmlet-driver` to run it.
//! Pure: no I/O, no libvirt, so the launcher links no libvirt.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use vmlet_mac::MacAddr;

mod libvirt_xml;
pub mod protocol;
mod state;
mod xml_writer;

pub use state::{DomainState, PausedReason, ShutOffReason};
pub use xml_writer::XmlError;

/// libvirt's default machine type for x86: PCIe, and under TCG the one that boots reliably (see ENVIRONMENT.md).
pub const DEFAULT_MACHINE: &str = "q35";

/// One libvirt domain: what the launcher asks libvirt to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainSpec {
    pub name: String,
    pub uuid: Uuid,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// QEMU's machine type, [`DEFAULT_MACHINE`] unless the VM asks for another.
    pub machine: String,
    pub accel: Accel,
    pub firmware: Firmware,
    pub boot: Boot,
    /// In order: the first virtio disk is `vda`, the first CD-ROM `sda`.
    pub disks: Vec<DiskSpec>,
    pub interfaces: Vec<InterfaceSpec>,
    /// The serial console, if the guest has one.
    pub console: Option<ConsolePaths>,
    /// What the guest's platform looks like beyond its size: topology, CPU model, features, clock, SMBIOS.
    pub platform: Platform,
    /// A VNC server on this unix socket, if set.
    pub vnc_socket: Option<PathBuf>,
    /// A guest agent channel on this unix socket, if set.
    pub guest_agent_socket: Option<PathBuf>,
}

/// The guest's platform. The default is vmlet's: ACPI and APIC, a UTC clock, the accelerator's CPU model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// How the vCPUs are laid out; all sockets when unset. Its product must be the vCPU count.
    pub topology: Option<CpuTopology>,
    /// The CPU model under KVM: `host-passthrough` when unset, `host-model`, or a QEMU model name. QEMU's
    /// emulator always runs its baseline model, which every x86-64 guest kernel runs on.
    pub cpu_model: Option<String>,
    pub features: Features,
    pub clock: Clock,
    /// The SMBIOS system serial number.
    pub smbios_serial: Option<String>,
}

impl Default for Platform {
    fn default() -> Platform {
        Platform {
            topology: None,
            cpu_model: None,
            features: Features {
                acpi: true,
                apic: true,
                smm: false,
                hyperv: Vec::new(),
            },
            clock: Clock {
                offset: ClockOffset::Utc { adjustment: 0 },
                timers: Vec::new(),
            },
            smbios_serial: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuTopology {
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features {
    /// ACPI carries the power button that a graceful shutdown presses.
    pub acpi: bool,
    pub apic: bool,
    /// System management mode; on regardless under Secure Boot.
    pub smm: bool,
    /// Hyper-V enlightenments, written only under KVM: QEMU's emulator does not offer them.
    pub hyperv: Vec<HypervFeature>,
}

/// One Hyper-V enlightenment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HypervFeature {
    Relaxed,
    Vapic,
    /// With the retries before a spinlock is reported to the host.
    Spinlocks(u32),
    Vpindex,
    Runtime,
    Synic,
    /// SynIC timers (libvirt's `stimer`).
    Stimer,
    Reset,
    Frequencies,
    Reenlightenment,
    Tlbflush,
    Ipi,
}

impl HypervFeature {
    /// libvirt's element name.
    pub fn name(self) -> &'static str {
        match self {
            HypervFeature::Relaxed => "relaxed",
            HypervFeature::Vapic => "vapic",
            HypervFeature::Spinlocks(_) => "spinlocks",
            HypervFeature::Vpindex => "vpindex",
            HypervFeature::Runtime => "runtime",
            HypervFeature::Synic => "synic",
            HypervFeature::Stimer => "stimer",
            HypervFeature::Reset => "reset",
            HypervFeature::Frequencies => "frequencies",
            HypervFeature::Reenlightenment => "reenlightenment",
            HypervFeature::Tlbflush => "tlbflush",
            HypervFeature::Ipi => "ipi",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clock {
    pub offset: ClockOffset,
    pub timers: Vec<Timer>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockOffset {
    /// UTC, plus `adjustment` seconds.
    Utc { adjustment: i64 },
    /// The local time of an IANA time zone.
    Timezone(String),
}

/// One timer of the clock, by libvirt's name (`rtc`, `pit`, `hpet`, `kvmclock`, `hypervclock`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timer {
    pub name: String,
    pub present: Option<bool>,
    pub tick_policy: Option<String>,
    pub track: Option<String>,
}

/// How QEMU runs guest code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    /// Hardware virtualization: the host CPU runs the guest.
    Kvm,
    /// QEMU's software emulator: slow, but needs nothing from the host.
    Tcg,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Boot {
    /// Direct kernel boot: QEMU loads the kernel and initrd itself, no firmware boot loader.
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    /// The firmware boots the first disk.
    Disk,
}

/// The firmware the guest starts in.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Firmware {
    /// SeaBIOS, QEMU's default.
    #[default]
    Bios,
    /// UEFI (OVMF): its code, read-only, and the guest's own copy of the variable store, made from `vars_template`
    /// by libvirt when it does not exist yet.
    Efi {
        code: PathBuf,
        vars_template: PathBuf,
        vars: PathBuf,
        /// Secure Boot: the code must be a build that enforces it, and the machine gets SMM so the guest cannot
        /// write the variable store around the firmware.
        secure_boot: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    pub source: DiskSource,
    pub media: DiskMedia,
    pub bus: DiskBus,
    pub readonly: bool,
    /// The disks the firmware tries, lowest first. When any disk has one, only disks with one are booted from.
    pub boot_order: Option<u32>,
    /// The serial number the guest sees.
    pub serial: Option<String>,
    /// The host's cache mode; QEMU's default when absent.
    pub cache: Option<DiskCache>,
}

/// The bus a disk hangs off, and so its name in the guest: `vdX` for virtio, `sdX` for SATA and SCSI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskBus {
    Virtio,
    Sata,
    /// virtio-scsi: one controller carries every SCSI disk.
    Scsi,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskCache {
    /// Direct I/O: no host page cache.
    None,
    Writethrough,
    Writeback,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskSource {
    /// An image file; a qcow2 overlay may have a backing file, which QEMU finds on its own.
    File { path: PathBuf, format: DiskFormat },
    /// A block device, used raw.
    Block { path: PathBuf },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskFormat {
    Raw,
    Qcow2,
}

/// What the guest sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskMedia {
    /// A hard disk. A cloud-init seed works as a read-only one.
    Disk,
    /// A CD-ROM, for ISO images that guests expect on optical media (SATA or SCSI: virtio cannot carry one).
    Cdrom,
}

/// A NIC backed by a tap that the launcher's network layer has already made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceSpec {
    pub tap: String,
    /// The pod's MAC under the bridge binding, so the guest takes over the pod's identity.
    pub mac: MacAddr,
    pub mtu: Option<u32>,
    pub model: NicModel,
}

/// The NIC the guest sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NicModel {
    #[default]
    Virtio,
    /// Intel's emulated cards, for guests without virtio drivers.
    E1000,
    E1000e,
}

/// The serial console: a unix socket to attach to, and a log of everything the guest wrote to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsolePaths {
    pub socket: PathBuf,
    pub log: PathBuf,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DomainSpecError {
    /// libvirt names its files after the domain, so the name cannot be empty nor hold a `/`.
    #[error("domain name {0:?} is empty or contains '/'")]
    InvalidName(String),
    #[error("a domain needs at least one vCPU")]
    NoVcpus,
    #[error("a domain needs memory")]
    NoMemory,
    #[error("a CD-ROM cannot be on the virtio bus")]
    VirtioCdrom,
    #[error("the CPU topology makes {topology} vCPUs, not {vcpus}")]
    Topology { topology: u32, vcpus: u32 },
    #[error(transparent)]
    Xml(#[from] XmlError),
}

impl DomainSpec {
    /// The domain XML libvirt defines the domain from.
    pub fn to_xml(&self) -> Result<String, DomainSpecError> {
        if self.name.is_empty() || self.name.contains('/') {
            return Err(DomainSpecError::InvalidName(self.name.clone()));
        }
        if self.vcpus == 0 {
            return Err(DomainSpecError::NoVcpus);
        }
        if self.memory_mib == 0 {
            return Err(DomainSpecError::NoMemory);
        }
        if self
            .disks
            .iter()
            .any(|d| d.media == DiskMedia::Cdrom && d.bus == DiskBus::Virtio)
        {
            return Err(DomainSpecError::VirtioCdrom);
        }
        if let Some(t) = self.platform.topology {
            let topology = t.sockets.saturating_mul(t.cores).saturating_mul(t.threads);
            if topology != self.vcpus {
                return Err(DomainSpecError::Topology {
                    topology,
                    vcpus: self.vcpus,
                });
            }
        }
        Ok(libvirt_xml::write(self)?)
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown accelerator {0:?}: expected kvm or tcg")]
pub struct UnknownAccel(pub String);

impl FromStr for Accel {
    type Err = UnknownAccel;

    fn from_str(text: &str) -> Result<Accel, UnknownAccel> {
        match text.trim().to_ascii_lowercase().as_str() {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            _ => Err(UnknownAccel(text.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests;
