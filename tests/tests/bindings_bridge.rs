//! The `bridge` binding with pod networks the basic tests do not cover: an IPv6 /128 pod address, and a pod
//! interface with routes besides the default one, which reach the guest as DHCPv4 option 121 and as route
//! information in router advertisements. Needs root and the built `vmlet-launcher` and `vmlet-driver`
//! (`cargo build --workspace`).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use vmlet_testkit::poll_until;
use vmlet_testkit::vm_pod::{GuestSpec, Launcher, VmPod, WAIT, fields, one_guest_at_a_time};

#[test]
fn a_pod_with_an_ipv6_128_gives_it_to_the_guest() {
    let _guest = one_guest_at_a_time();
    let pod = VmPod::subnet();
    pod.node_routes_ipv6();
    pod.node
        .ip(&["-6", "addr", "add", "fd00:10:244:1::1/64", "dev", "veth-node", "nodad"]);
    pod.node
        .ip(&["-6", "addr", "add", "fe80::1/64", "dev", "veth-node", "nodad"]);
    pod.pod
        .ip(&["-6", "addr", "add", "fd00:10:244:1::7/128", "dev", "eth0", "nodad"]);
    pod.pod
        .ip(&["-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0"]);
    let spec = GuestSpec::new("bridge: {}", "fd00:10:244:1::1").ipv6();
    let launcher = pod.start(&pod.write_manifest("vm.yaml", &spec));

    let lease6 = fields(&pod.wait_console(&launcher, "VMLET-GUEST lease6 ", 1));
    assert_eq!(lease6["ip"], "fd00:10:244:1::7");
    let route6 = pod.wait_console(&launcher, "VMLET-GUEST route6 default", 1);
    assert!(
        route6.starts_with("VMLET-GUEST route6 default via fe80::1 dev eth0 "),
        "{route6}"
    );
    pod.wait_console(&launcher, "VMLET-GUEST ready", 1);
    let addresses = pod.console_lines("VMLET-GUEST addr6 dev=eth0 inet6=fd00:10:244:1::7/");
    assert_eq!(
        addresses,
        ["VMLET-GUEST addr6 dev=eth0 inet6=fd00:10:244:1::7/128 scope=global"],
        "{}",
        pod.console()
    );
    assert!(
        pod.console_lines("VMLET-GUEST route6 fd00:10:244:1::/64").is_empty(),
        "a /128 puts no prefix on the guest's link: {}",
        pod.console()
    );
    assert_eq!(
        pod.console_lines("VMLET-GUEST ping "),
        ["VMLET-GUEST ping target=fd00:10:244:1::1 ok"],
        "the guest reaches its neighbour through the router"
    );
}

#[test]
fn the_pods_further_routes_reach_the_guest() {
    let _guest = one_guest_at_a_time();
    let pod = VmPod::dual_stack();
    // A second router on the pod's subnet for the service range, and addresses behind both routers.
    pod.node.ip(&["addr", "add", "10.244.1.254/24", "dev", "veth-node"]);
    pod.node.ip(&["addr", "add", "10.96.0.10/32", "dev", "lo"]);
    pod.node.ip(&["-6", "addr", "add", "fd00:10:96::a/128", "dev", "lo"]);
    pod.node.ip(&["link", "set", "lo", "up"]);
    pod.pod
        .ip(&["route", "add", "10.96.0.0/12", "via", "10.244.1.254", "dev", "eth0"]);
    pod.pod.ip(&[
        "-6",
        "route",
        "add",
        "fd00:10:96::/112",
        "via",
        "fe80::1",
        "dev",
        "eth0",
    ]);
    let spec = GuestSpec::new("bridge: {}", "10.96.0.10,fd00:10:96::a")
        .ipv6()
        .listen(&[8080]);
    let launcher = pod.start(&pod.write_manifest("vm.yaml", &spec));

    let lease = fields(&pod.wait_console(&launcher, "VMLET-GUEST lease ", 1));
    assert_eq!(
        lease["routes"], "10.96.0.0/12-10.244.1.254,0.0.0.0/0-10.244.1.1",
        "option 121 carries the further route, the default route last"
    );
    pod.wait_console(&launcher, "VMLET-GUEST link ", 1);
    assert_eq!(
        pod.console_lines("VMLET-GUEST route 10.96.0.0/12 via 10.244.1.254 dev eth0")
            .len(),
        1,
        "{}",
        pod.console()
    );
    pod.wait_console(&launcher, "VMLET-GUEST ready", 1);
    let route6 = pod.console_lines("VMLET-GUEST route6 fd00:10:96::/112 via fe80::1 dev eth0");
    assert_eq!(
        route6.len(),
        1,
        "route information from the advertisement: {}",
        pod.console()
    );
    assert_eq!(
        pod.console_lines("VMLET-GUEST ping "),
        [
            "VMLET-GUEST ping target=10.96.0.10 ok",
            "VMLET-GUEST ping target=fd00:10:96::a ok"
        ]
    );
    assert!(!pod.console().contains("VMLET-GUEST error"), "{}", pod.console());

    // The pod itself reaches its guest, whose address is the pod's own, as `vmlet ssh` does on Kubernetes.
    assert_eq!(
        pod.connect_guest(8080).as_deref(),
        Ok("VMLET-GUEST hello hostname=testvm")
    );
    let refused = pod.connect_guest(9090);
    assert!(
        refused
            .as_ref()
            .is_err_and(|err| err.contains("port 9090") && err.contains("refused")),
        "{refused:?}"
    );
}

/// A pod whose IPv6 default gateway is the node end's global address, with a further address on the node to ping.
fn pod_with_a_global_ipv6_gateway() -> VmPod {
    let pod = VmPod::subnet();
    pod.node_routes_ipv6();
    pod.node
        .ip(&["-6", "addr", "add", "fd00:10:244:1::1/64", "dev", "veth-node", "nodad"]);
    pod.node.ip(&["-6", "addr", "add", "fd00:10:96::a/128", "dev", "lo"]);
    pod.node.ip(&["link", "set", "lo", "up"]);
    pod.pod
        .ip(&["-6", "addr", "add", "fd00:10:244:1::7/64", "dev", "eth0", "nodad"]);
    pod.pod.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        "fd00:10:244:1::1",
        "dev",
        "eth0",
    ]);
    pod
}

/// The node end's own link-local address, which the kernel makes from its MAC address, once it is usable.
fn node_link_local(pod: &VmPod) -> String {
    poll_until(
        "the node end's link-local address",
        WAIT,
        Duration::from_millis(100),
        || {
            let shown = pod
                .node
                .ip(&["-6", "-o", "addr", "show", "dev", "veth-node", "scope", "link"]);
            if shown.contains("tentative") {
                return None;
            }
            shown
                .split_whitespace()
                .find(|word| word.starts_with("fe80::"))
                .map(|net| net.split('/').next().unwrap().to_owned())
        },
    )
    .unwrap()
}

/// The guest's default route goes through `router`, and it reaches the node's further address through it.
fn assert_routed_through(pod: &VmPod, launcher: &Launcher, router: &str) {
    let route6 = pod.wait_console(launcher, "VMLET-GUEST route6 default", 1);
    assert!(
        route6.starts_with(&format!("VMLET-GUEST route6 default via {router} dev eth0 ")),
        "the gateway's link-local address is the guest's router: {route6}"
    );
    pod.wait_console(launcher, "VMLET-GUEST ready", 1);
    assert_eq!(
        pod.console_lines("VMLET-GUEST ping "),
        ["VMLET-GUEST ping target=fd00:10:96::a ok"],
        "the guest reaches an address beyond its subnet through the gateway"
    );
}

#[test]
fn a_global_ipv6_gateway_still_gives_the_guest_a_default_route() {
    let _guest = one_guest_at_a_time();
    let pod = pod_with_a_global_ipv6_gateway();
    // A gateway has long finished its duplicate address detection when a pod starts.
    let node_link_local = node_link_local(&pod);
    let spec = GuestSpec::new("bridge: {}", "fd00:10:96::a").ipv6();
    let launcher = pod.start(&pod.write_manifest("vm.yaml", &spec));

    assert_routed_through(&pod, &launcher, &node_link_local);
}

/// Right after a CNI set a pod up, the node end's link-local address may not answer yet (duplicate address
/// detection, or here not there at all) when the launcher starts: the launcher rewires the pod at once, goes on
/// looking for the gateway's router in the background, and advertises it to the guest once it answers.
#[test]
fn a_gateway_whose_router_answers_only_after_the_launcher_started_still_becomes_the_guests_router() {
    let _guest = one_guest_at_a_time();
    let pod = pod_with_a_global_ipv6_gateway();
    let node_link_local = node_link_local(&pod);
    let router = format!("{node_link_local}/64");
    pod.node.ip(&["-6", "addr", "del", &router, "dev", "veth-node"]);
    let spec = GuestSpec::new("bridge: {}", "fd00:10:96::a").ipv6();
    let launcher = pod.start(&pod.write_manifest("vm.yaml", &spec));

    poll_until("the pod interface rewired", WAIT, Duration::from_millis(100), || {
        pod.pod.ip(&["-o", "link", "show"]).contains("eth0-nic").then_some(())
    })
    .unwrap();
    // With duplicate address detection, as a CNI's node end has it at first.
    pod.node.ip(&["-6", "addr", "add", &router, "dev", "veth-node"]);

    assert_routed_through(&pod, &launcher, &node_link_local);
}
