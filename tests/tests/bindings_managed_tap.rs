//! The `managedTap` binding end to end: the plumbing of `bridge`, and the guest's addresses from the pod network's
//! own DHCP and router advertisements (dnsmasq on the node end of the veth), none from vmlet. Needs root, dnsmasq,
//! and the built `vmlet-launcher` and `vmlet-driver` (`cargo build --workspace`).

#![allow(clippy::unwrap_used)]

use vmlet_testkit::Child;
use vmlet_testkit::vm_pod::{GuestSpec, MTU, POD_MAC, VmPod, WAIT, fields, one_guest_at_a_time};

/// The pod network's DHCP server: a static lease for the pod's MAC, DNS and a domain that the pod's resolv.conf
/// does not name, so the guest's lease can only have come from it; router advertisements and DHCPv6 on the IPv6
/// subnet.
fn cni_dhcp(pod: &VmPod) -> Child {
    let mut command = pod.node.exec("dnsmasq");
    command.args([
        "--keep-in-foreground",
        "--log-facility=-",
        "--log-dhcp",
        "--conf-file=/dev/null",
        "--port=0",
        "--no-ping",
        "--interface=veth-node",
        "--bind-interfaces",
        "--dhcp-authoritative",
        "--dhcp-range=10.244.1.0,static,255.255.255.0,1h",
        "--dhcp-range=fd00:10:244:1::,static,64,1h",
        "--enable-ra",
        &format!("--dhcp-host={POD_MAC},10.244.1.7,[fd00:10:244:1::7],testvm"),
        "--dhcp-option=option:router,10.244.1.1",
        "--dhcp-option=option:dns-server,10.96.0.53",
        "--dhcp-option=option:domain-search,cni.example",
        "--dhcp-option=option6:dns-server,[fd00:10:96::53]",
        &format!("--dhcp-option=option:mtu,{MTU}"),
    ]);
    command.arg(format!("--dhcp-leasefile={}", pod.dir.join("dnsmasq.leases").display()));
    command.arg(format!("--pid-file={}", pod.dir.join("dnsmasq.pid").display()));
    let dnsmasq = Child::spawn("dnsmasq", &mut command);
    dnsmasq
        .wait_for_line("DHCP, static leases only on 10.244.1.0", WAIT)
        .unwrap_or_else(|timeout| panic!("{timeout}"));
    dnsmasq
}

#[test]
fn the_guest_gets_its_lease_from_the_pod_networks_dhcp() {
    let _guest = one_guest_at_a_time();
    let pod = VmPod::dual_stack();
    let dnsmasq = cni_dhcp(&pod);
    let spec = GuestSpec::new("managedTap: {}", "10.244.1.1,fd00:10:244:1::1").ipv6();
    let launcher = pod.start(&pod.write_manifest("vm.yaml", &spec));

    let lease = fields(&pod.wait_console(&launcher, "VMLET-GUEST lease ", 1));
    assert_eq!(
        lease["ip"], "10.244.1.7/24",
        "the address the pod network's DHCP holds for the pod's MAC"
    );
    assert_eq!(
        lease["server"], "10.244.1.1",
        "from the pod network's server, not vmlet's"
    );
    assert_eq!(lease["router"], "10.244.1.1");
    assert_eq!(lease["dns"], "10.96.0.53");
    assert_eq!(lease["search"], "cni.example");
    assert_eq!(lease["mtu"], MTU.to_string());
    let link = fields(&pod.wait_console(&launcher, "VMLET-GUEST link ", 1));
    assert_eq!((link["mtu"].as_str(), link["mac"].as_str()), ("1400", POD_MAC));
    pod.assert_default_route("10.244.1.1");
    let lease6 = fields(&pod.wait_console(&launcher, "VMLET-GUEST lease6 ", 1));
    assert_eq!(lease6["ip"], "fd00:10:244:1::7");
    assert_eq!(lease6["dns"], "fd00:10:96::53", "from the pod network's DHCPv6");
    let route6 = pod.wait_console(&launcher, "VMLET-GUEST route6 default", 1);
    assert!(
        route6.starts_with("VMLET-GUEST route6 default via fe80::") && route6.contains(" dev eth0 "),
        "the pod network's router advertisements reach the guest: {route6}"
    );
    pod.wait_console(&launcher, "VMLET-GUEST ready", 1);
    assert_eq!(
        pod.console_lines("VMLET-GUEST ping "),
        [
            "VMLET-GUEST ping target=10.244.1.1 ok",
            "VMLET-GUEST ping target=fd00:10:244:1::1 ok"
        ]
    );
    assert!(
        dnsmasq
            .output()
            .contains(&format!("DHCPACK(veth-node) 10.244.1.7 {POD_MAC}")),
        "{}",
        dnsmasq.output()
    );

    let status = pod.control("status");
    assert_eq!(status["status"]["interfaces"][0]["binding"], "managedTap", "{status}");
    assert_eq!(
        status["status"]["dhcp"],
        serde_json::Value::Null,
        "vmlet serves no DHCP: {status}"
    );
}
