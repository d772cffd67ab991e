//! Readiness and liveness probes in standalone mode, where the handler probes each guest itself: a TCP probe of a
//! port the test guest serves makes the VM Ready only once the guest answers there, and a liveness probe that
//! fails ends the guest's run as failed, which the run strategy restarts.
//!
//! Needs root and the built `vmlet-handler`, `vmlet-launcher` and `vmlet-driver`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use vmlet_testkit::poll_until;
use vmlet_testkit::standalone::{BOOT, Machine, WAIT};
use vmlet_testkit::vm_pod::{GuestSpec, one_guest_at_a_time};

/// Writes `name`'s manifest: the test guest serving TCP on 8080, with `probes` (YAML under the template's spec).
fn add_probed_vm(machine: &Machine, name: &str, probes: &str) {
    let spec = GuestSpec {
        name: name.to_owned(),
        ..GuestSpec::new("bridge: {}", "10.111.0.1")
    }
    .listen(&[8080]);
    let manifest = spec.manifest() + probes;
    std::fs::write(machine.manifests().join(format!("{name}.yaml")), manifest).unwrap();
}

#[test]
fn a_tcp_readiness_probe_makes_the_vm_ready_once_its_port_answers() {
    let _guest = one_guest_at_a_time();
    let mut machine = Machine::new();
    machine.start_handler();
    add_probed_vm(
        &machine,
        "ready",
        "      readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}\n",
    );

    // A guest runs long before it serves: meanwhile it is Running and not Ready, with the probe's words.
    let not_ready = poll_until("ready to run, not ready", BOOT, Duration::from_millis(100), || {
        let status = machine.status_file("ready");
        (status.contains("printableStatus: Running") && status.contains("reason: GuestNotReady")).then_some(status)
    });
    let not_ready = not_ready.unwrap_or_else(|timeout| panic!("{timeout}\n{}", machine.diagnostics("ready")));
    assert!(
        !machine.console("ready").contains("VMLET-GUEST listen port=8080"),
        "not ready while the guest did not listen yet\n{not_ready}"
    );

    machine.wait_status("ready", &["Running", "True"], BOOT);
    assert!(
        machine.console("ready").contains("VMLET-GUEST listen port=8080"),
        "ready once the guest listens\n{}",
        machine.diagnostics("ready")
    );
}

#[test]
fn a_failing_liveness_probe_ends_the_run_as_failed_and_the_vm_restarts() {
    let _guest = one_guest_at_a_time();
    let mut machine = Machine::new();
    machine.start_handler();
    // Nothing serves 9090 in the guest: the probe fails from the first check (no answer while the guest boots,
    // refused once it runs).
    add_probed_vm(
        &machine,
        "sick",
        "      livenessProbe: {tcpSocket: {port: 9090}, periodSeconds: 1, failureThreshold: 2}\n",
    );
    machine.wait_status("sick", &["Running"], BOOT);
    let first = machine.shim_pid("sick");

    let failed = poll_until("the run to fail", WAIT, Duration::from_millis(100), || {
        let status = machine.status_file("sick");
        status.contains("reason: GuestDestroyed").then_some(status)
    });
    let failed = failed.unwrap_or_else(|timeout| panic!("{timeout}\n{}", machine.diagnostics("sick")));
    assert!(
        failed.contains("the guest was destroyed (the liveness probe failed: "),
        "the failure says why\n{failed}"
    );
    let handler = machine.handler().output();
    assert!(
        handler.contains("LivenessProbeFailed") && handler.contains("the liveness probe failed"),
        "{handler}"
    );

    // Always restarts a failed run, after its back-off, in a new pod.
    let restarted = poll_until("a new run", BOOT, Duration::from_millis(250), || {
        let record = std::fs::read_to_string(machine.pod_dir("sick").join("shim.json")).ok()?;
        let record: serde_json::Value = serde_json::from_str(&record).ok()?;
        let status = machine.status_file("sick");
        (record["pid"].as_u64()? as u32 != first && status.contains("restartCount: 1")).then_some(())
    });
    restarted.unwrap_or_else(|timeout| panic!("{timeout}\n{}", machine.diagnostics("sick")));
}
