//! Which accelerator this host can really use.
//!
//! `/dev/kvm` existing proves little: on some nested or paravirtual hosts it exists while the CPU has no VMX or SVM,
//! and stock guest kernels then hang or die with "emulation failure" (measured on vmlet's CI machines). So KVM is
//! chosen only when the CPU advertises VMX or SVM *and* the kernel creates a VM on `/dev/kvm`; otherwise TCG. Both
//! checks take well under a millisecond, unlike starting QEMU to try.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use vmlet_domain::{Accel, UnknownAccel};

/// The environment variable that overrides detection: `kvm` or `tcg`.
pub const ACCEL_ENV: &str = "VMLET_ACCEL";

/// The stable KVM API version, unchanged since Linux 2.6.22.
const KVM_API_VERSION: i32 = 12;
const KVMIO: u8 = 0xAE;

nix::ioctl_none!(kvm_get_api_version, KVMIO, 0x00);
// KVM_CREATE_VM is _IO(KVMIO, 0x01) but takes the machine type as its integer argument.
nix::ioctl_write_int_bad!(kvm_create_vm, nix::request_code_none!(KVMIO, 0x01));

#[derive(Debug, thiserror::Error)]
pub enum KvmUnusable {
    #[error("cannot read /proc/cpuinfo")]
    CpuInfo(#[source] io::Error),
    #[error("the CPU advertises neither vmx nor svm")]
    NoVirtualizationFlags,
    #[error("cannot open /dev/kvm")]
    Open(#[source] io::Error),
    #[error("/dev/kvm does not tell its KVM API version")]
    NoApiVersion(#[source] nix::Error),
    #[error("/dev/kvm speaks KVM API {0}, not {KVM_API_VERSION}")]
    ApiVersion(i32),
    #[error("/dev/kvm refuses to create a VM")]
    CreateVm(#[source] nix::Error),
}

/// The accelerator [`ACCEL_ENV`] names, else KVM if this host can run KVM guests, else TCG.
pub fn choose() -> Result<Accel, UnknownAccel> {
    choose_with(std::env::var(ACCEL_ENV).ok().as_deref(), kvm_usable)
}

fn choose_with(
    requested: Option<&str>,
    probe_kvm: impl FnOnce() -> Result<(), KvmUnusable>,
) -> Result<Accel, UnknownAccel> {
    if let Some(requested) = requested.filter(|value| !value.trim().is_empty()) {
        let accel = requested.parse()?;
        tracing::info!(%accel, "accelerator as requested in {ACCEL_ENV}");
        return Ok(accel);
    }
    match probe_kvm() {
        Ok(()) => {
            tracing::info!(accel = %Accel::Kvm, "accelerator detected");
            Ok(Accel::Kvm)
        }
        Err(reason) => {
            let reason = format!("{:#}", anyhow::Error::new(reason));
            tracing::info!(accel = %Accel::Tcg, %reason, "KVM is unusable here, emulating");
            Ok(Accel::Tcg)
        }
    }
}

pub fn kvm_usable() -> Result<(), KvmUnusable> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").map_err(KvmUnusable::CpuInfo)?;
    if !cpu_has_virtualization(&cpuinfo) {
        return Err(KvmUnusable::NoVirtualizationFlags);
    }
    let kvm = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(KvmUnusable::Open)?;
    // SAFETY: `kvm` is an open /dev/kvm for the duration of the call; the ioctl takes no argument.
    let version = unsafe { kvm_get_api_version(kvm.as_raw_fd()) }.map_err(KvmUnusable::NoApiVersion)?;
    if version != KVM_API_VERSION {
        return Err(KvmUnusable::ApiVersion(version));
    }
    // SAFETY: as above; machine type 0 is the default VM type on x86.
    let vm = unsafe { kvm_create_vm(kvm.as_raw_fd(), 0) }.map_err(KvmUnusable::CreateVm)?;
    // SAFETY: KVM_CREATE_VM returned a new file descriptor that nothing else owns; dropping it destroys the VM.
    drop(unsafe { OwnedFd::from_raw_fd(vm) });
    Ok(())
}

/// Whether `/proc/cpuinfo` lists the hardware virtualization extensions (Intel VMX or AMD SVM).
fn cpu_has_virtualization(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(key, _)| key.trim() == "flags")
        .any(|(_, flags)| flags.split_whitespace().any(|flag| flag == "vmx" || flag == "svm"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPYC_GUEST: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n\
        flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep hypervisor lahf_lm cmp_legacy\n\n";
    const XEON_HOST: &str = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr vmx smx est tm2 ssse3\n";
    const EPYC_HOST: &str = "processor\t: 0\nflags\t\t: fpu vme svm extapic\nvmx flags\t: none\n";

    #[test]
    fn virtualization_flags_come_from_the_flags_line() {
        assert!(!cpu_has_virtualization(EPYC_GUEST));
        assert!(cpu_has_virtualization(XEON_HOST));
        assert!(cpu_has_virtualization(EPYC_HOST));
        assert!(!cpu_has_virtualization("model name\t: vmx svm\nflags\t: fpu vmxe\n"));
        assert!(!cpu_has_virtualization(""));
    }

    #[test]
    fn a_request_overrides_detection() {
        let kvm_works = || Ok(());
        let no_kvm = || Err(KvmUnusable::NoVirtualizationFlags);
        assert_eq!(choose_with(Some("tcg"), kvm_works), Ok(Accel::Tcg));
        assert_eq!(choose_with(Some("kvm"), no_kvm), Ok(Accel::Kvm));
        assert_eq!(choose_with(Some("xen"), kvm_works), Err(UnknownAccel("xen".to_owned())));
    }

    #[test]
    fn detection_decides_without_a_request() {
        assert_eq!(choose_with(None, || Ok(())), Ok(Accel::Kvm));
        assert_eq!(choose_with(Some(" "), || Ok(())), Ok(Accel::Kvm));
        let paravirtual = || Err(KvmUnusable::NoVirtualizationFlags);
        assert_eq!(choose_with(None, paravirtual), Ok(Accel::Tcg));
        let no_device = || Err(KvmUnusable::Open(std::io::ErrorKind::NotFound.into()));
        assert_eq!(choose_with(None, no_device), Ok(Accel::Tcg));
    }
}
