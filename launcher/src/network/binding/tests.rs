//! What each binding serves the guest, for the pods CNIs make: IPv4, IPv6, dual stack, a /32 with an on-link
//! gateway, further routes, a global IPv6 gateway.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use vmlet_api::{Binding, Empty, Interface, PodNetwork, Port};
use vmlet_dhcp::MacAddr;

use super::*;
use crate::network::apply::Wired;
use crate::network::pod_interface::{PodInterface, PodRoute};
use crate::network::resolv_conf::DnsConfig;

const POD_MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x07]);
const LINK_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 1]);
const PORT_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 2]);

fn route(destination: &str, gateway: Option<&str>) -> PodRoute {
    crate::network::pod_interface::tests::route(destination, gateway, false, 0)
}

fn pod(ipv4: &[&str], ipv6: &[&str], routes: Vec<PodRoute>) -> PodInterface {
    let gateway = |v6: bool| {
        routes
            .iter()
            .find(|r| r.destination.prefix_len() == 0 && r.destination.addr().is_ipv6() == v6)
            .and_then(|r| r.gateway)
    };
    PodInterface {
        name: "eth0".into(),
        index: 2,
        mac: POD_MAC,
        mtu: 1400,
        ipv4: ipv4.iter().map(|a| a.parse().unwrap()).collect(),
        ipv6: ipv6.iter().map(|a| a.parse().unwrap()).collect(),
        ipv6_link_local: None,
        gateway_v4: match gateway(false) {
            Some(IpAddr::V4(gateway)) => Some(gateway),
            _ => None,
        },
        gateway_v6: match gateway(true) {
            Some(IpAddr::V6(gateway)) => Some(gateway),
            _ => None,
        },
        gateway_v6_link_local: None,
        routes,
    }
}

fn v4() -> PodInterface {
    pod(
        &["10.244.1.7/24"],
        &[],
        vec![route("10.244.1.0/24", None), route("0.0.0.0/0", Some("10.244.1.1"))],
    )
}

fn v6() -> PodInterface {
    pod(
        &[],
        &["fd00:10:244:1::7/64"],
        vec![route("fd00:10:244:1::/64", None), route("::/0", Some("fe80::1"))],
    )
}

fn dual_stack() -> PodInterface {
    let (v4, v6) = (v4(), v6());
    PodInterface {
        ipv6: v6.ipv6,
        gateway_v6: v6.gateway_v6,
        routes: v4.routes.into_iter().chain(v6.routes).collect(),
        ..v4
    }
}

fn calico() -> PodInterface {
    pod(
        &["10.244.1.7/32"],
        &[],
        vec![route("169.254.1.1/32", None), route("0.0.0.0/0", Some("169.254.1.1"))],
    )
}

fn several_routes() -> PodInterface {
    let mut pod = dual_stack();
    pod.routes.extend([
        route("10.96.0.0/12", Some("10.244.1.1")),
        route("fd00:10:96::/112", Some("fe80::1")),
    ]);
    pod
}

fn request_for(binding: Binding) -> BindingRequest {
    BindingRequest {
        binding,
        interface: "eth0".into(),
        run_dir: "/run/vmlet".into(),
        resolv_conf: "/etc/resolv.conf".into(),
        hostname: "vm1".into(),
        subdomain: None,
        guest_mac: None,
        ports: Vec::new(),
        subnets: GuestSubnets::parse(None, None).unwrap(),
    }
}

/// What a setup of `binding` makes of `pod`, as its apply step reports it.
fn wired(binding: Binding, pod: PodInterface) -> Wired {
    let (served_link, server_address, guest_mac, pod_port_mac) = match binding {
        Binding::Bridge => (
            "vb-eth0",
            Some(Ipv4Addr::new(169, 254, 75, 10)),
            POD_MAC,
            Some(PORT_MAC),
        ),
        Binding::ManagedTap => ("vb-eth0", None, POD_MAC, Some(PORT_MAC)),
        Binding::Tap => (
            "tap-eth0",
            Some(Ipv4Addr::new(169, 254, 75, 10)),
            POD_MAC,
            Some(PORT_MAC),
        ),
        Binding::Masquerade => (
            "vb-eth0",
            Some(Ipv4Addr::new(10, 0, 2, 1)),
            MacAddr([2, 0, 0, 0, 0, 9]),
            None,
        ),
    };
    Wired {
        served_link: served_link.into(),
        served_link_mac: LINK_MAC,
        server_address,
        tap: "tap-eth0".into(),
        guest_mac,
        pod_port_mac,
        mtu: pod.mtu,
        pod,
        dns: DnsConfig::parse("nameserver 10.96.0.10\nnameserver fd00:10:96::a\nsearch cluster.local\n"),
    }
}

fn guest(binding: Binding, pod: PodInterface) -> GuestNetwork {
    let request = request_for(binding);
    let wired = wired(binding, pod);
    match binding {
        Binding::Bridge | Binding::Tap => pod_identity(&request, &wired),
        Binding::ManagedTap => managed_tap::guest_network(&request, &wired),
        Binding::Masquerade => masquerade::guest_network(&request, &wired),
    }
}

/// The families served, as (DHCPv4 link, DHCPv6 link).
fn served_on(guest: &GuestNetwork) -> (Option<&str>, Option<&str>) {
    (
        guest.dhcpv4.as_ref().map(|s| s.interface.as_str()),
        guest.dhcpv6.as_ref().map(|s| s.interface.as_str()),
    )
}

#[test]
fn each_binding_serves_the_families_the_pod_has_on_its_own_link() {
    let pods = [
        ("v4", v4()),
        ("v6", v6()),
        ("dual stack", dual_stack()),
        ("/32", calico()),
    ];
    for (binding, link) in [
        (Binding::Bridge, Some("vb-eth0")),
        (Binding::Tap, Some("tap-eth0")),
        (Binding::Masquerade, Some("vb-eth0")),
        (Binding::ManagedTap, None),
    ] {
        for (name, pod) in &pods {
            let guest = guest(binding, pod.clone());
            let expected = (
                link.filter(|_| !pod.ipv4.is_empty()),
                link.filter(|_| !pod.ipv6.is_empty()),
            );
            assert_eq!(served_on(&guest), expected, "{binding:?}, {name}");
            assert_eq!(guest.tap, "tap-eth0");
            assert_eq!(guest.mtu, 1400);
            let pod_addresses: Vec<IpAddr> = pod
                .ipv4
                .iter()
                .map(|n| IpAddr::V4(n.addr()))
                .chain(pod.ipv6.iter().map(|n| IpAddr::V6(n.addr())))
                .collect();
            assert_eq!(
                guest.addresses, pod_addresses,
                "the VM is reached at the pod's addresses"
            );
        }
    }
}

#[test]
fn a_pod_identity_guest_gets_the_pods_addresses_and_routes() {
    for binding in [Binding::Bridge, Binding::Tap] {
        let guest = guest(binding, several_routes());
        assert_eq!(guest.guest_mac, POD_MAC);
        let v4 = guest.dhcpv4.unwrap().config;
        assert_eq!(v4.address, "10.244.1.7/24".parse().unwrap());
        assert_eq!(v4.gateway, Some(Ipv4Addr::new(10, 244, 1, 1)));
        assert_eq!(
            v4.routes.len(),
            1,
            "the further route, beside the subnet and default ones: {:?}",
            v4.routes
        );
        let v6 = guest.dhcpv6.unwrap().config;
        assert_eq!(v6.address, "fd00:10:244:1::7/64".parse().unwrap());
        assert_eq!(v6.router.map(|r| r.link_local), Some("fe80::1".parse().unwrap()));
        assert_eq!(v6.routes, ["fd00:10:96::/112".parse().unwrap()]);
        assert_eq!(v6.server_mac, LINK_MAC);
        assert_eq!(guest.router_search, None, "a link-local gateway needs no search");
    }
    let calico = guest(Binding::Bridge, calico()).dhcpv4.unwrap().config;
    assert_eq!(calico.address, "10.244.1.7/32".parse().unwrap());
    assert_eq!(calico.gateway, Some(Ipv4Addr::new(169, 254, 1, 1)));
    assert_eq!(calico.validate(), Ok(()));
}

#[test]
fn a_global_ipv6_gateway_is_searched_for_from_the_pod_port() {
    let mut pod = v6();
    pod.routes = vec![route("::/0", Some("fd00:10:244:1::1"))];
    pod.gateway_v6 = Some("fd00:10:244:1::1".parse().unwrap());
    for binding in [Binding::Bridge, Binding::Tap] {
        let guest = guest(binding, pod.clone());
        assert_eq!(guest.dhcpv6.as_ref().unwrap().config.router, None, "not known yet");
        let search = guest.router_search.expect("a search");
        assert_eq!(search.gateway, pod.gateway_v6.unwrap());
        assert_eq!((search.pod_port, search.pod_port_mac), (2, PORT_MAC));
        assert_eq!(search.state_file, request_for(binding).state_file());
    }
    let found = PodInterface {
        gateway_v6_link_local: Some("fe80::42:aff:fef4:101".parse().unwrap()),
        ..pod.clone()
    };
    assert_eq!(
        guest(Binding::Bridge, found).router_search,
        None,
        "recorded by an earlier launcher"
    );
    assert_eq!(
        guest(Binding::Masquerade, pod.clone()).router_search,
        None,
        "the bridge is the router"
    );
    assert_eq!(
        guest(Binding::ManagedTap, pod).router_search,
        None,
        "the pod network serves the guest"
    );
}

#[test]
fn a_masquerade_guest_gets_private_addresses_and_the_bridge_as_router() {
    let guest = guest(Binding::Masquerade, several_routes());
    assert_eq!(guest.guest_mac, MacAddr([2, 0, 0, 0, 0, 9]));
    let v4 = guest.dhcpv4.unwrap().config;
    assert_eq!(
        (v4.address.to_string(), v4.gateway),
        ("10.0.2.2/24".into(), Some(Ipv4Addr::new(10, 0, 2, 1)))
    );
    assert_eq!(v4.routes, [], "the pod's routes are the pod's, behind NAT");
    let v6 = guest.dhcpv6.unwrap().config;
    assert_eq!(v6.address.to_string(), "fd10:0:2::2/120");
    assert_eq!(v6.router.map(|r| r.link_local), Some("fe80::1".parse().unwrap()));
}

#[test]
fn a_subdomain_comes_first_among_the_search_domains() {
    let pod: Vec<String> = ["ns.svc.cluster.local", "svc.cluster.local", "cluster.local"]
        .map(String::from)
        .into();
    assert_eq!(
        with_subdomain(&pod, "web"),
        [
            "web.ns.svc.cluster.local",
            "ns.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local"
        ]
    );
    let standalone = vec!["lan".to_owned()];
    assert_eq!(with_subdomain(&standalone, "web"), standalone);
}

fn interface() -> Interface {
    Interface {
        name: "default".into(),
        masquerade: Some(Empty {}),
        ports: vec![Port {
            name: None,
            protocol: Some("UDP".into()),
            port: 53,
        }],
        mac_address: Some("02:00:00:00:00:2a".into()),
        ..Interface::default()
    }
}

fn request(interface: &Interface, network: Option<&PodNetwork>) -> Result<BindingRequest, PlanError> {
    BindingRequest::new(
        interface,
        network,
        "eth0",
        Path::new("/run/vmlet"),
        Path::new("/etc/resolv.conf"),
        "vm1",
    )
}

#[test]
fn a_request_takes_the_binding_mac_ports_and_subnets_from_the_spec() {
    let network = PodNetwork {
        vm_network_cidr: Some("192.168.9.0/24".into()),
        vm_ipv6_network_cidr: None,
    };
    let request = request(&interface(), Some(&network)).unwrap();
    assert_eq!(request.binding, Binding::Masquerade);
    assert_eq!(request.guest_mac, Some(MacAddr([2, 0, 0, 0, 0, 0x2a])));
    assert_eq!(request.ports, [forwarded_port(Some("UDP"), 53).unwrap()]);
    assert_eq!(request.subnets.guest_v4().to_string(), "192.168.9.2/24");
    assert_eq!(request.subnets.guest_v6().to_string(), "fd10:0:2::2/120");
    assert_eq!(request.state_file(), Path::new("/run/vmlet/network-eth0.json"));
}

#[test]
fn a_bad_subnet_is_refused_before_anything_is_touched() {
    let network = PodNetwork {
        vm_network_cidr: Some("10.0.2.0/31".into()),
        vm_ipv6_network_cidr: None,
    };
    assert!(matches!(
        request(&interface(), Some(&network)),
        Err(PlanError::GuestSubnet(..))
    ));
}

#[test]
fn binding_names_are_the_specs() {
    let names = [Binding::Bridge, Binding::Masquerade, Binding::Tap, Binding::ManagedTap].map(binding_name);
    assert_eq!(names, ["bridge", "masquerade", "tap", "managedTap"]);
}
