//! KubeVirt's own examples boot in standalone mode, changed only as a user porting them would change them: the
//! `apiVersion` (a `VirtualMachineInstance` taken as a VM's template, as `scripts/kubevirt-compat` takes it) and
//! the containerDisk's image, here the Debian cloud image of `images/cloud/` served by a registry on loopback. The
//! examples are read from `shared/kubevirt-examples` beside the repository (or `VMLET_KUBEVIRT_EXAMPLES`); without
//! them the tests say so and pass.
//!
//! Needs root, the built workspace and the packages of `scripts/setup`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use vmlet_testkit::kubevirt::{BOOTED, convert, examples_dir};
use vmlet_testkit::registry::Registry;
use vmlet_testkit::standalone::Machine;
use vmlet_testkit::vm_pod::one_guest_at_a_time;
use vmlet_testkit::{cloud_image, poll_until};

/// From the manifest to the guest agent's answer: a pull, then 30 to 60 s of boot under TCG, more when loaded.
const BOOT: Duration = Duration::from_secs(420);
/// The image these examples boot: Fedora with KubeVirt's test tooling, 1 GB of memory asked for it. (The
/// examples with 128 MiB boot CirrOS, in which Debian's initramfs alone does not fit.)
const EXAMPLES_IMAGE: &str = "registry:5000/kubevirt/fedora-with-test-tooling-container-disk:devel";
const IMAGE: &str = "vmlet/debian:12";

/// Boots the example `file`, whose VM is `vm`, and waits until its guest's agent answers.
fn boots(file: &str, vm: &str) {
    let path = examples_dir().join(file);
    let Ok(example) = std::fs::read_to_string(&path) else {
        eprintln!("skipped: KubeVirt's example {} is not there", path.display());
        return;
    };
    let _guest = one_guest_at_a_time();
    let registry = Registry::start();
    registry.push(&format!("oci-archive:{}", cloud_image().oci_archive().display()), IMAGE);
    let mut machine = Machine::new();
    machine.forward_loopback_port(registry.addr().port());
    machine.start_handler();

    assert_eq!(example.matches(EXAMPLES_IMAGE).count(), 1, "{example}");
    let ported = convert(&example.replace(EXAMPLES_IMAGE, &format!("{}/{IMAGE}", registry.addr()))).unwrap();
    std::fs::write(machine.manifests().join(file), ported).unwrap();

    machine.wait_status(vm, &["Running"], BOOT);
    let answered = poll_until(
        format!("{vm}'s guest agent to answer"),
        BOOT,
        Duration::from_millis(500),
        || {
            let status = machine.status_file(vm);
            status.contains("guestOSInfo").then_some(status)
        },
    );
    let status = answered.unwrap_or_else(|timeout| panic!("{timeout}\n{}", machine.diagnostics(vm)));
    assert!(status.contains("Debian GNU/Linux"), "{status}");
    assert!(
        status.contains("ipAddress: 10.111.0."),
        "the guest has its pod's address\n{status}"
    );
}

// Their names make long run directories under the test's state folder: libvirt's sockets there fit only through
// the driver's short name for its root (vmlet-driver's `root::name_for_libvirt`).

#[test]
fn vmi_fedora_boots() {
    boots(BOOTED[0], "vmi-fedora");
}

#[test]
fn vmi_masquerade_boots() {
    boots(BOOTED[1], "vmi-masquerade");
}
