//! `vmlet-launcher run` with the `bridge` binding as a pod runs it (the fixture is `vmlet_testkit::vm_pod`): in a
//! network namespace that plays the pod, as PID 1 of a PID namespace of its own, booting the real test guest of
//! `images/guest/` under libvirt. Every check reads what the guest printed on its serial console.
//!
//! Needs root and the built `vmlet-launcher` and `vmlet-driver` (`cargo build --workspace`).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use vmlet_testkit::vm_pod::{BOOT, MTU, POD_MAC, VmPod, WAIT, children, fields, one_guest_at_a_time};
use vmlet_testkit::{NetNs, VethEnd, poll_until, veth};

#[test]
fn the_guest_takes_the_pods_identity_and_shuts_down_on_sigterm() {
    let _guest = one_guest_at_a_time();
    let pod = VmPod::subnet();
    let mut launcher = pod.start(&pod.manifest("10.244.1.1", "256Mi"));

    let lease = fields(&pod.wait_console(&launcher, "VMLET-GUEST lease ", 1));
    assert_eq!(lease["ip"], "10.244.1.7/24", "the guest has the pod's address");
    assert_eq!(lease["router"], "10.244.1.1", "and the pod's gateway");
    assert_eq!(lease["dns"], "10.96.0.10");
    assert_eq!(
        lease["search"],
        "default.svc.cluster.local,svc.cluster.local,cluster.local"
    );
    assert_eq!(lease["mtu"], "1400");
    assert_eq!(lease["hostname"], "testvm");
    let link = fields(&pod.wait_console(&launcher, "VMLET-GUEST link ", 1));
    assert_eq!(
        (link["mtu"].as_str(), link["mac"].as_str()),
        ("1400", POD_MAC),
        "the guest has the pod's MAC and MTU"
    );
    let ping = pod.wait_console(&launcher, "VMLET-GUEST ping ", 1);
    assert_eq!(
        ping, "VMLET-GUEST ping target=10.244.1.1 ok",
        "the guest reaches the node"
    );

    let status = pod.control("status");
    assert_eq!(status["status"]["phase"], "running", "{status}");
    assert_eq!(status["status"]["dhcp"]["lease"], "bound", "{status}");
    assert_eq!(
        status["status"]["interfaces"][0]["ip_addresses"][0], "10.244.1.7",
        "{status}"
    );

    launcher.signal(launcher.pid1(), nix::sys::signal::Signal::SIGTERM);
    assert_eq!(launcher.exit_code(BOOT), Some(0), "{}", launcher.process.output());
    pod.wait_console(&launcher, "VMLET-GUEST poweroff ", 1);
    assert!(
        launcher.process.output().contains("guest ended ending=ShutDown"),
        "{}",
        launcher.process.output()
    );
    assert_eq!(pod.vm_processes(), Vec::<String>::new());
}

#[test]
fn a_calico_pod_with_an_off_link_gateway_works() {
    let _guest = one_guest_at_a_time();
    let pod = VmPod::calico();
    let launcher = pod.start(&pod.manifest("169.254.1.1", "256Mi"));
    let lease = fields(&pod.wait_console(&launcher, "VMLET-GUEST lease ", 1));
    assert_eq!(lease["ip"], "10.244.1.7/32");
    assert_eq!(lease["routes"], "169.254.1.1/32-0.0.0.0,0.0.0.0/0-169.254.1.1");
    let ping = pod.wait_console(&launcher, "VMLET-GUEST ping ", 1);
    assert_eq!(ping, "VMLET-GUEST ping target=169.254.1.1 ok");
    assert!(!pod.console().contains("VMLET-GUEST error"), "{}", pod.console());
}

#[test]
fn sigkill_leaves_nothing_behind_and_a_new_launcher_carries_on() {
    let _guest = one_guest_at_a_time();
    let pod = VmPod::subnet();
    let manifest = pod.manifest("10.244.1.1", "256Mi");
    let mut first = pod.start(&manifest);
    // The ping line, not only the lease: the second guest's lines are counted after the first guest's.
    pod.wait_console(&first, "VMLET-GUEST ping ", 1);
    assert!(!pod.vm_processes().is_empty(), "QEMU runs for the pod");

    first.signal(first.launcher_pid(), nix::sys::signal::Signal::SIGKILL);
    first.exit_code(WAIT);
    let left = poll_until("no QEMU left", WAIT, Duration::from_millis(100), || {
        pod.vm_processes().is_empty().then_some(())
    });
    assert!(left.is_ok(), "left behind: {:?}", pod.vm_processes());

    // The container restarts in the same pod: the network is already rewired, and the guest gets the same address.
    let second = pod.start(&manifest);
    let lease = fields(&pod.wait_console(&second, "VMLET-GUEST lease ", 2));
    assert_eq!(lease["ip"], "10.244.1.7/24");
    assert_eq!(
        pod.wait_console(&second, "VMLET-GUEST ping ", 2),
        "VMLET-GUEST ping target=10.244.1.1 ok"
    );
    assert!(
        second.process.output().contains("network ready"),
        "{}",
        second.process.output()
    );
}

#[test]
fn another_mac_on_the_bridge_gets_no_lease() {
    let _guest = one_guest_at_a_time();
    let pod = VmPod::subnet();
    let launcher = pod.start(&pod.manifest("10.244.1.1", "256Mi"));
    pod.wait_console(&launcher, "VMLET-GUEST lease ", 1);

    let intruder = NetNs::new();
    veth::link(
        &pod.pod,
        &VethEnd::named("intruder"),
        &intruder,
        &VethEnd::named("eth0").mac("02:00:00:00:00:99"),
    );
    pod.pod.ip(&["link", "set", "intruder", "master", "vb-eth0"]);
    let udhcpc = intruder
        .exec("busybox")
        .args([
            "udhcpc",
            "-i",
            "eth0",
            "-n",
            "-q",
            "-f",
            "-t",
            "3",
            "-T",
            "1",
            "-s",
            "/bin/true",
        ])
        .output()
        .unwrap();
    assert!(
        !udhcpc.status.success(),
        "the intruder got a lease: {}",
        String::from_utf8_lossy(&udhcpc.stdout)
    );
    let status = pod.control("status");
    assert!(
        status["status"]["dhcp"]["counters"]["ignored"].as_u64().unwrap() >= 1,
        "{status}"
    );
}

#[test]
fn an_invalid_spec_is_refused_and_nothing_is_touched() {
    let pod = VmPod::subnet();
    let before = pod.pod.ip(&["-br", "addr", "show", "eth0"]);
    for (manifest, message) in [
        (
            pod.manifest_named("lots.yaml", "10.244.1.1", "lots"),
            "invalid VM spec: domain.memory.guest: \"lots\" is not a quantity",
        ),
        (
            pod.dir.write(
                "bad.yaml",
                std::fs::read_to_string(pod.manifest("10.244.1.1", "256Mi"))
                    .unwrap()
                    .replace("bridge: {}", "sriov: {}"),
            ),
            "spec.template.spec.domain.devices.interfaces[0].sriov: not supported by vmlet",
        ),
    ] {
        let mut launcher = pod.start(&manifest);
        assert_eq!(launcher.exit_code(WAIT), Some(1));
        let output = launcher.process.output();
        assert!(output.contains(message), "expected {message:?} in:\n{output}");
        assert_eq!(output.lines().count(), 1, "one clear line:\n{output}");
    }
    assert_eq!(
        pod.pod.ip(&["-br", "addr", "show", "eth0"]),
        before,
        "the pod interface is as it was"
    );
    assert!(!pod.run_dir().exists(), "nothing was written");
}

#[test]
fn a_dead_driver_takes_the_launcher_and_the_guest_down() {
    let _guest = one_guest_at_a_time();
    let pod = VmPod::subnet();
    let mut launcher = pod.start(&pod.manifest("10.244.1.1", "256Mi"));
    pod.wait_console(&launcher, "VMLET-GUEST lease ", 1);
    assert!(!pod.vm_processes().is_empty(), "QEMU runs for the pod");

    let driver = poll_until(
        "vmlet-driver under the launcher",
        WAIT,
        Duration::from_millis(50),
        || {
            children(launcher.launcher_pid()).into_iter().find(|pid| {
                std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.ends_with("vmlet-driver"))
            })
        },
    )
    .unwrap();
    launcher.signal(driver, nix::sys::signal::Signal::SIGKILL);
    let code = launcher.exit_code(WAIT);
    assert!(
        code.is_some_and(|code| code != 0),
        "exit {code:?}:\n{}",
        launcher.process.output()
    );
    let left = poll_until("no QEMU left", WAIT, Duration::from_millis(100), || {
        pod.vm_processes().is_empty().then_some(())
    });
    assert!(left.is_ok(), "left behind: {:?}", pod.vm_processes());
}

#[test]
fn the_control_socket_pauses_and_resumes_and_a_dead_qemu_ends_the_launcher() {
    let _guest = one_guest_at_a_time();
    let pod = VmPod::subnet();
    let mut launcher = pod.start(&pod.manifest("10.244.1.1", "256Mi"));
    pod.wait_console(&launcher, "VMLET-GUEST ping ", 1);

    let paused = pod.control("pause");
    assert_eq!(paused["status"]["phase"], "paused", "{paused}");
    assert_eq!(pod.control("status")["status"]["phase"], "paused");
    let resumed = pod.control("resume");
    assert_eq!(resumed["status"]["phase"], "running", "{resumed}");
    let refused = pod.control("resume");
    assert_eq!(refused["error"]["kind"], "invalid_state", "{refused}");
    assert_eq!(refused["error"]["message"], "the guest is not paused", "{refused}");

    let qemu = pod
        .vm_processes()
        .iter()
        .find(|line| line.contains("qemu-system"))
        .and_then(|line| line.split_whitespace().next()?.parse::<i32>().ok())
        .expect("QEMU runs for the pod");
    launcher.signal(qemu, nix::sys::signal::Signal::SIGKILL);
    assert_eq!(
        launcher.exit_code(WAIT),
        Some(4),
        "exit code 4: the guest crashed\n{}",
        launcher.process.output()
    );
    assert!(
        launcher.process.output().contains("guest ended ending=Crashed"),
        "{}",
        launcher.process.output()
    );
}

#[test]
fn a_dual_stack_guest_gets_the_pods_ipv6_address_and_route_with_no_configuration() {
    let _guest = one_guest_at_a_time();
    let pod = VmPod::dual_stack();
    let launcher = pod.start(&pod.manifest_ipv6("10.244.1.1,fd00:10:244:1::1"));

    let lease = fields(&pod.wait_console(&launcher, "VMLET-GUEST lease ", 1));
    assert_eq!(lease["ip"], "10.244.1.7/24");
    assert_eq!(lease["dns"], "10.96.0.10", "DHCPv4 carries the IPv4 server");
    let link = fields(&pod.wait_console(&launcher, "VMLET-GUEST link ", 1));
    assert_eq!(link["mtu"], MTU.to_string());
    let lease6 = fields(&pod.wait_console(&launcher, "VMLET-GUEST lease6 ", 1));
    assert_eq!(lease6["ip"], "fd00:10:244:1::7", "the guest has the pod's IPv6 address");
    assert_eq!(lease6["dns"], "fd00:10:96::a", "and the pod's IPv6 DNS server");
    assert_eq!(
        lease6["search"],
        "default.svc.cluster.local,svc.cluster.local,cluster.local"
    );
    let route6 = pod.wait_console(&launcher, "VMLET-GUEST route6 default", 1);
    assert!(
        route6.starts_with("VMLET-GUEST route6 default via fe80::1 dev eth0 "),
        "the pod's IPv6 gateway is the guest's: {route6}"
    );
    pod.wait_console(&launcher, "VMLET-GUEST ping ", 2);
    let pings: Vec<String> = pod
        .console()
        .lines()
        .map(str::trim)
        .filter(|line| line.starts_with("VMLET-GUEST ping "))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        pings,
        [
            "VMLET-GUEST ping target=10.244.1.1 ok",
            "VMLET-GUEST ping target=fd00:10:244:1::1 ok"
        ],
        "the guest reaches the node over both families"
    );
    assert!(!pod.console().contains("VMLET-GUEST error"), "{}", pod.console());

    let status = pod.control("status");
    let addresses = &status["status"]["interfaces"][0]["ip_addresses"];
    assert_eq!(
        *addresses,
        serde_json::json!(["10.244.1.7", "fd00:10:244:1::7"]),
        "{status}"
    );
}

#[test]
fn an_ipv6_only_guest_gets_its_address_and_route_without_dhcpv4() {
    let _guest = one_guest_at_a_time();
    let pod = VmPod::ipv6_only();
    let launcher = pod.start(&pod.manifest_ipv6("fd00:10:244:1::1"));

    assert_eq!(
        pod.wait_console(&launcher, "VMLET-GUEST lease ", 1),
        "VMLET-GUEST lease failed"
    );
    let lease6 = fields(&pod.wait_console(&launcher, "VMLET-GUEST lease6 ", 1));
    assert_eq!(lease6["ip"], "fd00:10:244:1::7");
    let route6 = pod.wait_console(&launcher, "VMLET-GUEST route6 default", 1);
    assert!(
        route6.starts_with("VMLET-GUEST route6 default via fe80::1 dev eth0 "),
        "{route6}"
    );
    assert_eq!(
        pod.wait_console(&launcher, "VMLET-GUEST ping ", 1),
        "VMLET-GUEST ping target=fd00:10:244:1::1 ok"
    );
    let status = pod.control("status");
    assert_eq!(
        status["status"]["dhcp"],
        serde_json::Value::Null,
        "no DHCPv4 server: {status}"
    );
}
