//! The `masquerade` binding end to end: the guest on its private subnet behind NAT in the pod, the pod interface as
//! the CNI left it, forwarded ports reached from the node (IPv4 and IPv6) and from the pod's own loopback (IPv4). Needs root and the built
//! `vmlet-launcher` and `vmlet-driver` (`cargo build --workspace`).

#![allow(clippy::unwrap_used)]

use vmlet_testkit::vm_pod::{GuestSpec, MTU, POD_MAC, VmPod, WAIT, fields, one_guest_at_a_time, tcp_read};

const HELLO: &str = "VMLET-GUEST hello hostname=testvm";

fn spec() -> GuestSpec {
    GuestSpec::new(
        "masquerade: {}, ports: [{port: 8080}, {port: 5353, protocol: UDP}]",
        "10.244.1.1,fd00:10:244:1::1",
    )
    .ipv6()
    .listen(&[8080, 9090])
}

#[test]
fn the_guest_sits_behind_nat_and_listed_ports_reach_it() {
    let _guest = one_guest_at_a_time();
    let pod = VmPod::dual_stack();
    let pod_before = pod.pod.ip(&["-br", "addr", "show", "eth0"]);
    let launcher = pod.start(&pod.write_manifest("vm.yaml", &spec()));

    let lease = fields(&pod.wait_console(&launcher, "VMLET-GUEST lease ", 1));
    assert_eq!(lease["ip"], "10.0.2.2/24", "the guest's private address");
    assert_eq!(lease["router"], "10.0.2.1", "the launcher's bridge is its gateway");
    assert_eq!(lease["server"], "10.0.2.1");
    assert_eq!(lease["dns"], "10.96.0.10", "the pod's DNS");
    assert_eq!(
        lease["search"],
        "default.svc.cluster.local,svc.cluster.local,cluster.local"
    );
    assert_eq!(lease["mtu"], MTU.to_string());
    assert_eq!(lease["hostname"], "testvm");
    // The guest prints its routes before its link, so once the link line is in, so are they.
    let link = fields(&pod.wait_console(&launcher, "VMLET-GUEST link ", 1));
    assert!(
        pod.console_lines("VMLET-GUEST route default via 10.0.2.1 dev eth0")
            .len()
            == 1,
        "{}",
        pod.console()
    );
    assert_eq!(link["mtu"], MTU.to_string());
    pod.assert_default_route("10.0.2.1");
    let guest_mac = link["mac"].clone();
    assert_ne!(guest_mac, POD_MAC, "the pod keeps its MAC address");
    let first_octet = u8::from_str_radix(&guest_mac[..2], 16).unwrap();
    assert_eq!(
        first_octet & 0x03,
        0x02,
        "a made-up MAC is locally administered unicast: {guest_mac}"
    );

    let lease6 = fields(&pod.wait_console(&launcher, "VMLET-GUEST lease6 ", 1));
    assert_eq!(lease6["ip"], "fd10:0:2::2");
    assert_eq!(lease6["dns"], "fd00:10:96::a");
    let route6 = pod.wait_console(&launcher, "VMLET-GUEST route6 default", 1);
    assert!(
        route6.starts_with("VMLET-GUEST route6 default via fe80::1 dev eth0 "),
        "the bridge advertises itself as the router: {route6}"
    );
    pod.wait_console(&launcher, "VMLET-GUEST ready", 1);
    assert_eq!(
        pod.console_lines("VMLET-GUEST route6 fd10:0:2::/120 dev eth0").len(),
        1,
        "the private prefix is on the link: {}",
        pod.console()
    );
    assert_eq!(
        pod.console_lines("VMLET-GUEST ping "),
        [
            "VMLET-GUEST ping target=10.244.1.1 ok",
            "VMLET-GUEST ping target=fd00:10:244:1::1 ok"
        ],
        "the guest reaches the node, whose only route back is to the pod's address"
    );
    assert!(!pod.console().contains("VMLET-GUEST error"), "{}", pod.console());

    assert_eq!(
        pod.pod.ip(&["-br", "addr", "show", "eth0"]),
        pod_before,
        "the pod interface keeps its addresses"
    );
    assert!(pod.pod.ip(&["link", "show", "eth0"]).contains(POD_MAC));

    for (ns, host) in [
        (&pod.node, "10.244.1.7"),
        (&pod.node, "fd00:10:244:1::7"),
        (&pod.pod, "127.0.0.1"),
        (&pod.pod, "::1"),
    ] {
        assert_eq!(
            tcp_read(ns, host, 8080).as_deref(),
            Ok(HELLO),
            "a forwarded port reaches the guest from {host}"
        );
        let refused = tcp_read(ns, host, 9090);
        assert!(
            refused.as_ref().is_err_and(|err| err.contains("Connection refused")),
            "a port not listed stays the pod's, which does not listen on it ({host}): {refused:?}"
        );
    }

    // `vmlet-launcher connect guest` reaches any TCP port the guest serves, listed or not.
    assert_eq!(pod.connect_guest(8080).as_deref(), Ok(HELLO));
    assert_eq!(pod.connect_guest(9090).as_deref(), Ok(HELLO), "an unlisted port");
    let refused = pod.connect_guest(7070);
    assert!(
        refused
            .as_ref()
            .is_err_and(|err| err.contains("port 7070") && err.contains("refused")),
        "the guest itself refuses what it does not serve: {refused:?}"
    );

    let status = pod.control("status");
    let interface = &status["status"]["interfaces"][0];
    assert_eq!(interface["binding"], "masquerade", "{status}");
    assert_eq!(interface["mac"], guest_mac.as_str(), "{status}");
    assert_eq!(
        interface["ip_addresses"],
        serde_json::json!(["10.244.1.7", "fd00:10:244:1::7"]),
        "the VM is reached at the pod's addresses: {status}"
    );
    assert_eq!(status["status"]["dhcp"]["lease"], "bound", "{status}");
}

#[test]
fn a_restarted_launcher_keeps_the_guests_mac_and_the_forwarding() {
    let _guest = one_guest_at_a_time();
    let pod = VmPod::dual_stack();
    let manifest = pod.write_manifest("vm.yaml", &spec());
    let mut first = pod.start(&manifest);
    pod.wait_console(&first, "VMLET-GUEST ready", 1);
    let mac = fields(&pod.wait_console(&first, "VMLET-GUEST link ", 1))["mac"].clone();
    let rules = pod.pod.run("nft", &["list", "table", "inet", "vmlet-nat"]);

    first.signal(first.launcher_pid(), nix::sys::signal::Signal::SIGKILL);
    first.exit_code(WAIT);
    let second = pod.start(&manifest);
    let lease = fields(&pod.wait_console(&second, "VMLET-GUEST lease ", 2));
    assert_eq!(lease["ip"], "10.0.2.2/24");
    assert_eq!(
        fields(&pod.wait_console(&second, "VMLET-GUEST link ", 2))["mac"],
        mac,
        "the guest keeps its MAC address"
    );
    pod.wait_console(&second, "VMLET-GUEST ready", 2);
    assert_eq!(
        pod.pod.run("nft", &["list", "table", "inet", "vmlet-nat"]),
        rules,
        "the same rules, once"
    );
    assert_eq!(tcp_read(&pod.node, "10.244.1.7", 8080).as_deref(), Ok(HELLO));
    assert!(
        second
            .process
            .output()
            .contains("carrying on from the recorded pod network"),
        "{}",
        second.process.output()
    );
}
