//! What each binding does to the pod and serves the guest, for the pods CNIs make: IPv4, IPv6, dual stack, a /32
//! with an on-link gateway, further routes, a global IPv6 gateway.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use vmlet_api::{Binding, Empty, Interface, PodNetwork, Port};
use vmlet_dhcp::MacAddr;

use super::plan::{LinkMac, LinkNames, NetworkPlan, Operation};
use super::*;
use crate::network::apply::{Recorded, Wired, read_record, write_record};
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

#[test]
fn links_are_named_after_the_pod_interface() {
    assert_eq!(
        LinkNames::for_interface("eth0").unwrap(),
        LinkNames {
            pod_port: "eth0-nic".to_owned(),
            bridge: "vb-eth0".to_owned(),
            tap: "tap-eth0".to_owned(),
            placeholder: "eth0".to_owned(),
        }
    );
    assert!(LinkNames::for_interface("net1-abcdefg").is_err());
    assert!(LinkNames::for_interface("net1-abcdef").is_ok());
    assert!(LinkNames::for_interface("").is_err());
}

/// The guest's MAC address a masquerade record keeps.
const RECORDED_GUEST_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 9]);

fn recorded(binding: Binding, pod: PodInterface) -> Recorded {
    Recorded {
        pod,
        dns: DnsConfig::parse("nameserver 10.96.0.10\nsearch cluster.local\n"),
        guest_mac: (binding == Binding::Masquerade).then_some(RECORDED_GUEST_MAC),
    }
}

fn plan_for(binding: Binding, pod: PodInterface) -> NetworkPlan {
    plan::plan(&request_for(binding), &recorded(binding, pod)).unwrap()
}

fn operations(binding: Binding, pod: PodInterface) -> Vec<String> {
    plan_for(binding, pod)
        .operations
        .iter()
        .map(Operation::to_string)
        .collect()
}

/// Every pod of the tests, with the placeholder's addresses and the guest's IPv4 address.
fn pods() -> [(&'static str, PodInterface, &'static str, Option<&'static str>); 5] {
    let dual = "10.244.1.7/24, fd00:10:244:1::7/64";
    [
        ("v4", v4(), "10.244.1.7/24", Some("10.244.1.7")),
        ("v6", v6(), "fd00:10:244:1::7/64", None),
        ("dual stack", dual_stack(), dual, Some("10.244.1.7")),
        ("/32", calico(), "10.244.1.7/32", Some("10.244.1.7")),
        ("several routes", several_routes(), dual, Some("10.244.1.7")),
    ]
}

#[test]
fn the_bridge_plan_makes_the_pod_interface_a_port_beside_the_tap() {
    for (name, pod, placeholder, guest) in pods() {
        let mut expected = vec![
            "load table Bridge vmlet".to_owned(),
            "ensure bridge vb-eth0 mtu 1400".into(),
            "serve from 169.254.75.10 on vb-eth0".into(),
            "bring vb-eth0 up".into(),
            "free the pod interface eth0 (2) as eth0-nic with a new MAC".into(),
            "no IPv6 addresses on eth0-nic".into(),
            "attach eth0-nic to vb-eth0 mtu 1400".into(),
            "stop learning behind eth0-nic".into(),
            "ensure tap tap-eth0".into(),
            "no IPv6 addresses on tap-eth0".into(),
            "attach tap-eth0 to vb-eth0 mtu 1400".into(),
            format!("ensure placeholder eth0 mtu 1400 with {placeholder}"),
        ];
        // The pod's way to its guest, over IPv4 only.
        if let Some(guest) = guest {
            expected.extend([
                format!("load table Bridge vmlet-guest-access: {guest} from tap-eth0 to 169.254.75.10 on vb-eth0"),
                "route 169.254.75.11/32 dev vb-eth0 src 169.254.75.10".into(),
                format!("neighbour 169.254.75.11 lladdr {POD_MAC} dev vb-eth0"),
            ]);
        }
        assert_eq!(operations(Binding::Bridge, pod), expected, "{name}");
    }
    let plan = plan_for(Binding::Bridge, calico());
    assert_eq!(
        plan.operations[0],
        Operation::LoadTables(vec![bridge::guard_table(
            "eth0-nic",
            bridge::Guard::KeepAddressingInPod
        )])
    );
    assert_eq!(
        (plan.served_link.as_str(), plan.tap.as_str(), plan.server_address),
        ("vb-eth0", "tap-eth0", Some(Ipv4Addr::new(169, 254, 75, 10)))
    );
    assert_eq!(plan.served_link_mac, LinkMac::ReadFrom("vb-eth0".into()));
    assert_eq!(plan.pod_port_mac, Some(LinkMac::ReadFrom("eth0-nic".into())));
    assert_eq!(plan.guest_mac, POD_MAC, "the guest takes the pod's MAC address");
}

#[test]
fn the_managed_tap_plan_is_the_bridge_plumbing_with_nothing_served() {
    for (name, pod, placeholder, _) in pods() {
        let bridge_plan = operations(Binding::Bridge, pod.clone());
        let mut expected: Vec<String> = bridge_plan[..11].to_vec();
        expected[2] = "no IPv6 addresses on vb-eth0".into();
        expected.push(format!("ensure placeholder eth0 mtu 1400 with {placeholder}"));
        assert_eq!(operations(Binding::ManagedTap, pod), expected, "{name}");
    }
    let plan = plan_for(Binding::ManagedTap, dual_stack());
    assert_eq!(
        plan.operations[0],
        Operation::LoadTables(vec![bridge::guard_table("eth0-nic", bridge::Guard::PodStackOnly)])
    );
    assert_eq!(plan.server_address, None);
    assert_eq!(plan.guest_mac, POD_MAC);
}

#[test]
fn the_tap_plan_joins_the_pod_interface_and_the_tap_by_tc() {
    for (name, pod, placeholder, _) in pods() {
        let expected = [
            "load table Inet vmlet-tap".to_owned(),
            "free the pod interface eth0 (2) as eth0-nic with a new MAC".into(),
            "no IPv6 addresses on eth0-nic".into(),
            "bring eth0-nic up mtu 1400".into(),
            "ensure tap tap-eth0".into(),
            "serve from 169.254.75.10 on tap-eth0".into(),
            "no IPv6 addresses on tap-eth0".into(),
            "bring tap-eth0 up mtu 1400".into(),
            "load the ingress filters of tap-eth0, eth0-nic".into(),
            format!("ensure placeholder eth0 mtu 1400 with {placeholder}"),
        ];
        assert_eq!(operations(Binding::Tap, pod), expected, "{name}");
    }
    let plan = plan_for(Binding::Tap, v4());
    assert_eq!(
        plan.operations[8],
        Operation::LoadIngressFilters(tap::ingress_filters("eth0-nic", "tap-eth0").into())
    );
    assert_eq!(plan.served_link_mac, LinkMac::ReadFrom("tap-eth0".into()));
    assert_eq!(plan.server_address, Some(Ipv4Addr::new(169, 254, 75, 10)));
}

#[test]
fn the_masquerade_plan_leaves_the_pod_interface_alone_and_routes_behind_nat() {
    for (name, pod, _, guest) in pods() {
        let (has_v4, has_v6) = (!pod.ipv4.is_empty(), !pod.ipv6.is_empty());
        let gateway: Vec<&str> = [
            has_v4.then_some("10.0.2.1/24"),
            has_v6.then_some("fd10:0:2::1/120"),
            has_v6.then_some("fe80::1/64"),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut expected = vec![
            "ensure bridge vb-eth0 mtu 1400".to_owned(),
            "no IPv6 addresses on vb-eth0".into(),
            "bring vb-eth0 up mac 02:00:0a:00:02:01 mtu 1400".into(),
            format!("address vb-eth0 with {}", gateway.join(", ")),
            "forward IPv4 on vb-eth0 with route_localnet".into(),
            "forward IPv4 on eth0".into(),
        ];
        if has_v6 {
            expected.push("forward IPv6".into());
        }
        expected.extend([
            "ensure tap tap-eth0".into(),
            "no IPv6 addresses on tap-eth0".into(),
            "attach tap-eth0 to vb-eth0 mtu 1400".into(),
            "load table Inet vmlet-nat".into(),
        ]);
        if guest.is_some() {
            expected.push("route 169.254.75.11/32 dev vb-eth0 src 10.0.2.1".into());
        }
        assert_eq!(operations(Binding::Masquerade, pod), expected, "{name}");
    }
    let plan = plan_for(Binding::Masquerade, dual_stack());
    assert_eq!(plan.served_link_mac, LinkMac::Fixed(masquerade::BRIDGE_MAC));
    assert_eq!(plan.pod_port_mac, None, "the pod interface keeps its MAC address");
    assert_eq!(plan.guest_mac, RECORDED_GUEST_MAC);
    assert_eq!(plan.server_address, Some(Ipv4Addr::new(10, 0, 2, 1)));
}

#[test]
fn a_masquerade_guest_takes_the_specs_mac_else_the_recorded_one() {
    let spec_mac = MacAddr([2, 0, 0, 0, 0, 0x2a]);
    let request = BindingRequest {
        guest_mac: Some(spec_mac),
        ..request_for(Binding::Masquerade)
    };
    let with_mac = recorded(Binding::Masquerade, v4());
    assert_eq!(plan::plan(&request, &with_mac).unwrap().guest_mac, spec_mac);
    let unrecorded = Recorded {
        guest_mac: None,
        ..with_mac
    };
    assert!(matches!(
        plan::plan(&request_for(Binding::Masquerade), &unrecorded),
        Err(PlanError::NoGuestMac)
    ));
    let no_address = recorded(Binding::Masquerade, pod(&[], &[], Vec::new()));
    assert!(matches!(
        plan::plan(&request_for(Binding::Masquerade), &no_address),
        Err(PlanError::NoPodAddress(_))
    ));
}

/// A restarted launcher plans from the record an earlier one wrote: the same plan, so applying it changes nothing.
#[test]
fn the_record_read_back_gives_the_same_plan() {
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("network-eth0.json");
    for binding in [Binding::Bridge, Binding::ManagedTap, Binding::Tap, Binding::Masquerade] {
        for (name, pod, _, _) in pods() {
            let recorded = recorded(binding, pod);
            write_record(&state_file, &recorded).unwrap();
            let read_back = read_record(&state_file).unwrap().unwrap();
            assert_eq!(
                plan::plan(&request_for(binding), &read_back).unwrap(),
                plan::plan(&request_for(binding), &recorded).unwrap(),
                "{binding:?}, {name}"
            );
        }
    }
}
