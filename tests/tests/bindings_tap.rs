//! The `tap` binding end to end: the pod interface and the guest's tap joined by tc redirects, no bridge, the guest
//! holding the pod's IP and MAC addresses, DHCP, DHCPv6 and router solicitations answered in the pod. Needs root and
//! the built `vmlet-launcher` and `vmlet-driver` (`cargo build --workspace`).

#![allow(clippy::unwrap_used)]

use vmlet_testkit::vm_pod::{GuestSpec, MTU, POD_MAC, VmPod, fields, one_guest_at_a_time, tcp_read};

#[test]
fn the_guest_takes_the_pods_identity_through_tc_redirects() {
    let _guest = one_guest_at_a_time();
    let pod = VmPod::dual_stack();
    let spec = GuestSpec::new("tap: {}", "10.244.1.1,fd00:10:244:1::1")
        .ipv6()
        .listen(&[8080]);
    let launcher = pod.start(&pod.write_manifest("vm.yaml", &spec));

    let lease = fields(&pod.wait_console(&launcher, "VMLET-GUEST lease ", 1));
    assert_eq!(lease["ip"], "10.244.1.7/24", "the guest has the pod's address");
    assert_eq!(lease["router"], "10.244.1.1", "and the pod's gateway");
    assert_eq!(
        lease["server"], "169.254.75.10",
        "from the launcher's server on the tap"
    );
    assert_eq!(lease["dns"], "10.96.0.10");
    assert_eq!(
        lease["search"],
        "default.svc.cluster.local,svc.cluster.local,cluster.local"
    );
    assert_eq!(lease["mtu"], MTU.to_string());
    let link = fields(&pod.wait_console(&launcher, "VMLET-GUEST link ", 1));
    assert_eq!((link["mtu"].as_str(), link["mac"].as_str()), ("1400", POD_MAC));
    pod.assert_default_route("10.244.1.1");
    let lease6 = fields(&pod.wait_console(&launcher, "VMLET-GUEST lease6 ", 1));
    assert_eq!(lease6["ip"], "fd00:10:244:1::7", "the guest has the pod's IPv6 address");
    assert_eq!(lease6["dns"], "fd00:10:96::a");
    let route6 = pod.wait_console(&launcher, "VMLET-GUEST route6 default", 1);
    assert!(
        route6.starts_with("VMLET-GUEST route6 default via fe80::1 dev eth0 "),
        "the pod's IPv6 gateway is the guest's router: {route6}"
    );
    pod.wait_console(&launcher, "VMLET-GUEST ready", 1);
    assert_eq!(
        pod.console_lines("VMLET-GUEST ping "),
        [
            "VMLET-GUEST ping target=10.244.1.1 ok",
            "VMLET-GUEST ping target=fd00:10:244:1::1 ok"
        ]
    );
    assert!(!pod.console().contains("VMLET-GUEST error"), "{}", pod.console());

    // The pod's addresses are the guest's: the node reaches the guest at them.
    for host in ["10.244.1.7", "fd00:10:244:1::7"] {
        assert_eq!(
            tcp_read(&pod.node, host, 8080).as_deref(),
            Ok("VMLET-GUEST hello hostname=testvm"),
            "{host}"
        );
    }
    let links = pod.pod.ip(&["-br", "link", "show"]);
    assert!(!links.contains("vb-eth0"), "no bridge: {links}");
    let filters = pod.pod.run("tc", &["filter", "show", "dev", "eth0-nic", "ingress"]);
    assert!(
        filters.contains("mirred (Egress Redirect to device tap-eth0)"),
        "{filters}"
    );

    let status = pod.control("status");
    assert_eq!(status["status"]["interfaces"][0]["binding"], "tap", "{status}");
    assert_eq!(status["status"]["dhcp"]["lease"], "bound", "{status}");
}
