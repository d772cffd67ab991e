//! `vmlet-handler standalone`, the embedded default: VMs from manifest files, each in a "pod" that is a network
//! namespace the handler makes, booting the real test guest of `images/guest/`.
//!
//! The handler runs in a namespace the test makes, which plays the machine: its host bridge, the pods' namespaces
//! and their NAT never touch the test machine's own network. Pod namespaces are named after the test's, so they are
//! removed when the test ends, however it ends.
//!
//! Needs root and the built `vmlet-handler`, `vmlet-launcher` and `vmlet-driver` (`cargo build --workspace`).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vmlet_testkit::registry::{LayoutLayer, write_layout};
use vmlet_testkit::standalone::{BOOT, GATEWAY_V6, Machine, WAIT};
use vmlet_testkit::vm_pod::{children, one_guest_at_a_time};
use vmlet_testkit::{ScratchDir, binary, poll_until};

/// The launcher: the shim's only child (PID 1 of the pod's PID namespace).
fn launcher_of(shim: u32) -> i32 {
    let pids = children(shim as i32);
    assert_eq!(pids.len(), 1, "the shim {shim} has one child, the launcher: {pids:?}");
    pids[0]
}

fn kill(pid: i32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
}

/// The whole life of a RerunOnFailure VM: a manifest dropped in boots it with its pod's address; a killed and
/// restarted handler re-adopts it without a restart; a killed launcher restarts it; an edit restarts it with the new
/// spec; removing the manifest stops it and removes its namespace.
#[test]
fn a_manifest_runs_a_vm_that_outlives_the_handler_and_reruns_after_a_failure() {
    let _guest = one_guest_at_a_time();
    let mut machine = Machine::new();
    machine.start_handler();
    machine.add_vm("web", "RerunOnFailure");

    let lease = machine.wait_lease("web");
    assert!(
        lease.contains("ip=10.111.0.2/24") && lease.contains("router=10.111.0.1"),
        "the guest has its pod's address: {lease}"
    );
    machine.wait_status("web", &["Running", "True", "10.111.0.2"], WAIT);
    assert_eq!(machine.pod_namespaces().len(), 1);

    // Killing the handler leaves the VM running; a new handler adopts it and restarts nothing.
    let shim = machine.shim_pid("web");
    machine.handler().signal(nix::sys::signal::Signal::SIGKILL);
    machine.handler().wait_exit(WAIT).unwrap();
    machine.start_handler();
    machine
        .handler()
        .wait_for_line("standalone mode started", WAIT)
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        machine.shim_pid("web"),
        shim,
        "the VM's pod is the same\n{}",
        machine.diagnostics("web")
    );
    let boots = machine.console("web").matches("VMLET-GUEST init").count();
    assert_eq!(boots, 1, "the guest booted once\n{}", machine.diagnostics("web"));
    machine.wait_status("web", &["Running", "True", "10.111.0.2"], WAIT);

    // A killed launcher is a failure: RerunOnFailure starts the VM again, in a new pod with the same address.
    kill(launcher_of(shim), nix::sys::signal::Signal::SIGKILL);
    let restarted = poll_until("a new pod for web", BOOT, Duration::from_millis(250), || {
        let record = std::fs::read_to_string(machine.pod_dir("web").join("shim.json")).ok()?;
        let record: serde_json::Value = serde_json::from_str(&record).ok()?;
        (record["pid"].as_u64()? as u32 != shim).then_some(())
    });
    restarted.unwrap_or_else(|timeout| panic!("{timeout}\n{}", machine.diagnostics("web")));
    let lease = machine.wait_lease("web");
    assert!(lease.contains("ip=10.111.0.2/24"), "{lease}");
    let previous = machine.dir().join("state/logs/default_web.log");
    assert!(
        std::fs::read_to_string(&previous).is_ok_and(|log| !log.is_empty()),
        "the killed run's log is kept in {}",
        previous.display()
    );
    assert!(
        machine.status_file("web").contains("restartCount: 1"),
        "{}",
        machine.status_file("web")
    );

    // Editing the manifest restarts the VM with the new spec, in a new pod.
    let shim = machine.shim_pid("web");
    let manifest = machine.manifests().join("web.yaml");
    let edited = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("guest: 256Mi", "guest: 320Mi");
    std::fs::write(&manifest, edited).unwrap();
    let restarted = poll_until("web to restart with 320Mi", BOOT, Duration::from_millis(250), || {
        let record = std::fs::read_to_string(machine.pod_dir("web").join("shim.json")).ok()?;
        let record: serde_json::Value = serde_json::from_str(&record).ok()?;
        let vm = std::fs::read_to_string(machine.pod_dir("web").join("vm.json")).ok()?;
        (record["pid"].as_u64()? as u32 != shim && vm.contains("320Mi")).then_some(())
    });
    restarted.unwrap_or_else(|timeout| panic!("{timeout}\n{}", machine.diagnostics("web")));
    machine.wait_lease("web");
    machine.wait_status("web", &["Running", "True", "10.111.0.2"], WAIT);

    // Removing the manifest shuts the guest down and removes its pod.
    std::fs::remove_file(machine.manifests().join("web.yaml")).unwrap();
    let gone = poll_until("web's pod and status to go", WAIT, Duration::from_millis(250), || {
        let status = machine.manifests().join("web.status.yaml");
        (!machine.pod_dir("web").exists() && machine.pod_namespaces().is_empty() && !status.exists()).then_some(())
    });
    gone.unwrap_or_else(|timeout| panic!("{timeout}\n{}", machine.diagnostics("web")));
    assert!(!machine.status().contains("web"));
    let console = machine.handler().output();
    let logged = console
        .lines()
        .any(|line| line.contains("the VM is Running") && line.contains("web"));
    assert!(logged, "each change of state is a log line naming the VM\n{console}");
    assert!(
        console.contains("stopping the launcher"),
        "the guest was asked to stop, not killed\n{console}"
    );
}

/// With an IPv6 pool the pod is dual stack: the guest gets the pod's IPv4 address over DHCP and its IPv6 address,
/// at the same offset in the IPv6 pool, over DHCPv6, reaches the IPv6 gateway, and its status lists both.
#[test]
fn a_dual_stack_pod_gives_the_guest_both_addresses() {
    let _guest = one_guest_at_a_time();
    let mut machine = Machine::new();
    machine.dual_stack();
    machine.start_handler();
    machine.add_dual_stack_vm("dual", "Always");

    let lease = machine.wait_lease("dual");
    assert!(lease.contains("ip=10.111.0.2/24"), "{lease}");
    let lease6 = machine.wait_lease6("dual");
    assert!(lease6.contains("ip=fd00:6d76:6c74::2 "), "{lease6}");
    let console = machine.console("dual");
    assert!(
        console.contains(&format!("VMLET-GUEST ping target={GATEWAY_V6} ok")),
        "the guest reaches the IPv6 gateway\n{console}"
    );
    assert!(
        console.contains("VMLET-GUEST route6 default via fe80::1 "),
        "the guest's default route is the bridge's link-local address\n{console}"
    );
    let record = std::fs::read_to_string(machine.pod_dir("dual").join("pod.json")).unwrap();
    assert!(record.contains("fd00:6d76:6c74::2/64"), "{record}");
    machine.wait_status("dual", &["Running", "True", "10.111.0.2"], WAIT);
    let listed = poll_until(
        "the IPv6 address in dual's status",
        WAIT,
        Duration::from_millis(250),
        || machine.status_file("dual").contains("fd00:6d76:6c74::2").then_some(()),
    );
    listed.unwrap_or_else(|timeout| panic!("{timeout}\n{}", machine.diagnostics("dual")));
}

/// VMs whose manifests are all there when the handler starts, and so are picked up in one pass, each get an
/// address of their own.
#[test]
fn vms_appearing_at_once_get_addresses_of_their_own() {
    let _guest = one_guest_at_a_time();
    let mut machine = Machine::new();
    let names = ["one", "two", "three"];
    for name in names {
        machine.add_vm(name, "Always");
    }
    machine.start_handler();
    let addresses = poll_until("a pod for each VM", WAIT, Duration::from_millis(100), || {
        names
            .iter()
            .map(|name| {
                let record = std::fs::read_to_string(machine.pod_dir(name).join("pod.json")).ok()?;
                let record: serde_json::Value = serde_json::from_str(&record).ok()?;
                Some(record["address"].as_str()?.to_owned())
            })
            .collect::<Option<Vec<String>>>()
    })
    .unwrap_or_else(|timeout| panic!("{timeout}\n{}", machine.diagnostics("one")));
    let mut unique = addresses.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "one address per pod: {addresses:?}");
}

/// A Manual VM on a fresh state folder starts on its `vmlet.dev/run: start` annotation; an edit restarts it with
/// the new spec; its manifest removed and written back starts it again.
#[test]
fn a_manual_vm_starts_on_request_restarts_when_edited_and_starts_when_written_back() {
    let _guest = one_guest_at_a_time();
    let mut machine = Machine::new();
    let manifest = machine.add_vm("manual", "Manual");
    let requested = std::fs::read_to_string(&manifest).unwrap().replace(
        "namespace: default,",
        "namespace: default, annotations: {vmlet.dev/run: start},",
    );
    std::fs::write(&manifest, &requested).unwrap();
    machine.start_handler();
    machine.wait_lease("manual");
    machine.wait_status("manual", &["Running", "True"], WAIT);

    let shim = machine.shim_pid("manual");
    std::fs::write(&manifest, requested.replace("guest: 256Mi", "guest: 320Mi")).unwrap();
    let restarted = poll_until("manual to restart with 320Mi", BOOT, Duration::from_millis(250), || {
        let record = std::fs::read_to_string(machine.pod_dir("manual").join("shim.json")).ok()?;
        let record: serde_json::Value = serde_json::from_str(&record).ok()?;
        let vm = std::fs::read_to_string(machine.pod_dir("manual").join("vm.json")).ok()?;
        (record["pid"].as_u64()? as u32 != shim && vm.contains("320Mi")).then_some(())
    });
    restarted.unwrap_or_else(|timeout| panic!("{timeout}\n{}", machine.diagnostics("manual")));
    machine.wait_lease("manual");

    std::fs::remove_file(&manifest).unwrap();
    let gone = poll_until(
        "manual's pod and status to go",
        WAIT,
        Duration::from_millis(250),
        || (!machine.pod_dir("manual").exists() && machine.status_file("manual").is_empty()).then_some(()),
    );
    gone.unwrap_or_else(|timeout| panic!("{timeout}\n{}", machine.diagnostics("manual")));
    std::fs::write(&manifest, &requested).unwrap();
    machine.wait_lease("manual");
    machine.wait_status("manual", &["Running", "True"], WAIT);
    let handler = machine.handler().output();
    assert!(!handler.contains("cannot write"), "{handler}");
}

/// A Once VM whose launcher is killed stays down, Failed; a manifest that does not validate is reported in its
/// status and starts nothing.
#[test]
fn a_once_vm_is_not_rerun_and_a_bad_manifest_is_reported() {
    let _guest = one_guest_at_a_time();
    let mut machine = Machine::new();
    machine.start_handler();
    machine.add_vm("batch", "Once");
    std::fs::write(
        machine.manifests().join("broken.yaml"),
        "apiVersion: vmlet.dev/v1alpha1\nkind: VirtualMachine\nmetadata: {name: broken}\nspec:\n  runStrategy: Always\n  template:\n    spec:\n      domain: {memory: {guest: lots}}\n",
    )
    .unwrap();

    machine.wait_lease("batch");
    let shim = machine.shim_pid("batch");
    kill(launcher_of(shim), nix::sys::signal::Signal::SIGKILL);
    machine.wait_status("batch", &["False"], WAIT);
    let failed = poll_until("batch to be Failed", WAIT, Duration::from_millis(250), || {
        machine.status_file("batch").contains("phase: Failed").then_some(())
    });
    failed.unwrap_or_else(|timeout| panic!("{timeout}\n{}", machine.diagnostics("batch")));
    let status = machine.status_file("batch");
    assert!(
        status.contains("LauncherKilled") && status.contains("SIGKILL"),
        "a killed launcher is reported killed: {status}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let shim_again = std::fs::read_to_string(machine.pod_dir("batch").join("shim.json")).ok();
    assert!(
        shim_again.is_none_or(|r| r.contains(&format!("\"pid\": {shim}"))),
        "no new launcher for a Once VM\n{}",
        machine.diagnostics("batch")
    );

    let broken = machine.status_file("broken");
    assert!(broken.contains("InvalidSpec") && broken.contains("lots"), "{broken}");
    machine.wait_status("broken", &["ErrorUnschedulable"], WAIT);
    assert!(!machine.pod_dir("broken").exists(), "nothing runs for a bad manifest");
    assert!(!Path::new(&machine.pod_dir("broken")).exists());
}

/// A shim that cannot start its launcher records the failure as the launcher's (exit code 1), so the handler sees
/// the run end instead of waiting for it.
#[test]
fn a_shim_that_cannot_start_the_launcher_records_a_failure() {
    let dir = ScratchDir::new();
    let output = Command::new(binary("vmlet-handler"))
        .arg("shim")
        .arg("--pod-dir")
        .arg(dir.path())
        .args(["--netns", "/run/netns/no-such-namespace", "--", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let log = std::fs::read_to_string(dir.join("launcher.log")).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no-such-namespace"), "one line says why: {stderr}{log}");
    let exit: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("exit.json")).unwrap()).unwrap();
    assert_eq!(exit["code"], 1, "{exit}");
    assert!(!dir.join("shim.json").exists(), "no shim ran a launcher");
}

/// `kernelBoot.container`: the kernel and initrd come from an image, here an OCI layout on disk (the air-gapped
/// source), pulled into the machine's store and linked into the pod like a containerDisk.
#[test]
fn a_kernel_from_an_image_boots() {
    let _guest = one_guest_at_a_time();
    let guest = vmlet_testkit::guest_image();
    let mut tar = tar::Builder::new(Vec::new());
    for (path, file) in [("boot/vmlinux", guest.kernel()), ("boot/initrd", guest.initrd())] {
        let bytes = std::fs::read(file).unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        tar.append_data(&mut header, path, bytes.as_slice()).unwrap();
    }
    let layout = ScratchDir::new();
    write_layout(layout.path(), "1", &[LayoutLayer::tar(tar.into_inner().unwrap())]);

    let mut machine = Machine::new();
    machine.start_handler();
    let path = machine.add_vm("kernel", "Always");
    let manifest = std::fs::read_to_string(&path).unwrap();
    let host_path = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("hostPath:"))
        .unwrap();
    let container = format!(
        "            container: {{image: \"oci:{}:1\", kernelPath: /boot/vmlinux, initrdPath: /boot/initrd}}",
        layout.path().display()
    );
    std::fs::write(&path, manifest.replace(host_path, &container)).unwrap();

    let lease = machine.wait_lease("kernel");
    assert!(lease.contains("ip=10.111.0."), "{lease}");
    let link = machine.pod_dir("kernel").join("volumes/kernel-boot");
    let image = std::fs::read_link(&link).unwrap();
    assert!(
        image.starts_with(machine.dir().join("state/images")),
        "the pod links the stored image: {}",
        image.display()
    );
}
