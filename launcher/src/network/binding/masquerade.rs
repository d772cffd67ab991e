//! The `masquerade` binding's plan: the guest's private subnets, the NAT table, and what the guest is served.
//!
//! A bridge `vb-<if>` holds the gateway addresses (the first host of each guest subnet, 10.0.2.1 and fd10:0:2::1 by
//! default, and the link-local fe80::1) with the tap `tap-<if>` as its only port. The launcher serves the guest the
//! second host (10.0.2.2, fd10:0:2::2) over DHCPv4 and DHCPv6, and router advertisements that name the bridge
//! itself as the router. nftables (table `inet vmlet-nat`) masquerades what the guest sends out behind the pod's
//! address and forwards inbound connections to the pod's addresses, all ports or only those listed, to the guest;
//! connections from the pod's own loopback (127.0.0.1) to a forwarded port reach the guest too.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use vmlet_dhcp::{MacAddr, ServerConfig, v6};
use vmlet_netfilter::{Family, Table};

use super::plan::{LinkMac, LinkNames, NetworkPlan, Operation};
use super::{BindingRequest, GUEST_FROM_POD, GuestNetwork, pod_addresses, served};
use crate::guest_addressing;
use crate::network::apply::{Recorded, Wired};
use crate::network::error::PlanError;
use crate::network::loopback_relay::LoopbackRelay;
use crate::network::pod_interface::PodInterface;

/// KubeVirt's defaults, so a guest moved from KubeVirt finds the network it knew.
pub const DEFAULT_SUBNET_V4: &str = "10.0.2.0/24";
pub const DEFAULT_SUBNET_V6: &str = "fd10:0:2::/120";
/// The bridge's link-local address, the guest's IPv6 router.
pub const GATEWAY_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The bridge's hardware address, set explicitly so that it never changes with its ports.
pub const BRIDGE_MAC: MacAddr = MacAddr([0x02, 0x00, 0x0a, 0x00, 0x02, 0x01]);

/// The guest's private subnets: the gateway is the first host of each, the guest the second.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestSubnets {
    pub v4: Ipv4Net,
    pub v6: Ipv6Net,
}

impl GuestSubnets {
    /// The subnets from the spec's `vmNetworkCIDR` and `vmIPv6NetworkCIDR`, KubeVirt's defaults when unset.
    pub fn parse(v4: Option<&str>, v6: Option<&str>) -> Result<GuestSubnets, PlanError> {
        let v4_text = v4.unwrap_or(DEFAULT_SUBNET_V4);
        let v6_text = v6.unwrap_or(DEFAULT_SUBNET_V6);
        let invalid = |text: &str, why| PlanError::GuestSubnet(text.to_owned(), why);
        let v4: Ipv4Net = v4_text.parse().map_err(|_| invalid(v4_text, "not an IPv4 CIDR"))?;
        let v6: Ipv6Net = v6_text.parse().map_err(|_| invalid(v6_text, "not an IPv6 CIDR"))?;
        if v4.prefix_len() > 30 {
            return Err(invalid(v4_text, "too small for a gateway and a guest"));
        }
        if v6.prefix_len() > 126 {
            return Err(invalid(v6_text, "too small for a gateway and a guest"));
        }
        if v4 != v4.trunc() || v6 != v6.trunc() {
            return Err(invalid(
                if v4 != v4.trunc() { v4_text } else { v6_text },
                "has host bits set",
            ));
        }
        Ok(GuestSubnets { v4, v6 })
    }

    pub fn gateway_v4(&self) -> Ipv4Net {
        host_v4(self.v4, 1)
    }

    pub fn guest_v4(&self) -> Ipv4Net {
        host_v4(self.v4, 2)
    }

    pub fn gateway_v6(&self) -> Ipv6Net {
        host_v6(self.v6, 1)
    }

    pub fn guest_v6(&self) -> Ipv6Net {
        host_v6(self.v6, 2)
    }
}

fn host_v4(net: Ipv4Net, n: u32) -> Ipv4Net {
    let ip = Ipv4Addr::from(u32::from(net.network()) + n);
    Ipv4Net::new(ip, net.prefix_len()).unwrap_or(net)
}

fn host_v6(net: Ipv6Net, n: u128) -> Ipv6Net {
    let ip = Ipv6Addr::from(u128::from(net.network()) + n);
    Ipv6Net::new(ip, net.prefix_len()).unwrap_or(net)
}

/// A port forwarded to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardedPort {
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn keyword(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// The DHCPv4 server's configuration: the guest's private address, the bridge as its gateway, the pod's DNS; none
/// when the pod has no IPv4 address to masquerade behind.
pub fn dhcpv4_config(wired: &Wired, subnets: &GuestSubnets, hostname: &str) -> Option<ServerConfig> {
    if wired.pod.ipv4.is_empty() {
        return None;
    }
    let gateway = subnets.gateway_v4().addr();
    let mut config = guest_addressing::dhcpv4_base(wired, subnets.guest_v4(), gateway, hostname);
    config.gateway = Some(gateway);
    Some(config)
}

/// The DHCPv6 and router advertisement configuration: the guest's private address, the bridge as its router; none
/// when the pod has no IPv6 address.
pub fn dhcpv6_config(wired: &Wired, subnets: &GuestSubnets) -> Option<v6::Config> {
    if wired.pod.ipv6.is_empty() {
        return None;
    }
    let mut config = guest_addressing::dhcpv6_base(wired, subnets.guest_v6());
    config.router = Some(v6::Router {
        link_local: GATEWAY_LINK_LOCAL,
        mac: Some(wired.served_link_mac),
    });
    Some(config)
}

/// The listed TCP ports, relayed from the pod's `[::1]` to the guest's IPv6 address (see
/// [`crate::network::loopback_relay`]); none without IPv6 or without a port list.
pub fn loopback_relays(wired: &Wired, subnets: &GuestSubnets, ports: &[ForwardedPort]) -> Vec<LoopbackRelay> {
    if wired.pod.ipv6.is_empty() {
        return Vec::new();
    }
    let guest = subnets.guest_v6().addr();
    ports
        .iter()
        .filter(|p| p.protocol == Protocol::Tcp)
        .map(|p| LoopbackRelay {
            listen: SocketAddr::new(Ipv6Addr::LOCALHOST.into(), p.port),
            guest: SocketAddr::new(guest.into(), p.port),
        })
        .collect()
}

/// The NAT rules, in the table `inet vmlet-nat`.
///
/// - `prerouting`: connections to the pod's addresses from outside go to the guest (the listed ports, or
///   everything).
/// - `output`: connections from the pod's own loopback (127.0.0.1) to a forwarded port go to the guest; this needs
///   `route_localnet` on the bridge for a packet from 127.0.0.1 to leave through it. IPv6 has no such setting: the
///   guest's answer to ::1, once translated back, arrives on the bridge with a loopback destination, which the
///   kernel drops; the launcher relays [::1] in user space instead ([`super::loopback_relay`]).
/// - `postrouting`: those loopback connections take the gateway's address as their source, which the guest can
///   answer; what the guest sends anywhere else leaves with the pod's address.
pub fn nat_table(pod: &PodInterface, bridge: &str, subnets: &GuestSubnets, ports: &[ForwardedPort]) -> Table {
    let pod_if = &pod.name;
    let guest4 = subnets.guest_v4().addr();
    let guest6 = subnets.guest_v6().addr();
    let gateway4 = subnets.gateway_v4().addr();
    let set = |addresses: Vec<String>| format!("{{ {} }}", addresses.join(", "));
    let pod4 = set(pod.ipv4.iter().map(|net| net.addr().to_string()).collect());
    let pod6 = set(pod.ipv6.iter().map(|net| net.addr().to_string()).collect());
    // What is forwarded: one match per protocol listed, or every protocol (loopback: TCP and UDP).
    let mut matches: Vec<String> = Vec::new();
    for protocol in [Protocol::Tcp, Protocol::Udp] {
        let numbers: Vec<String> = ports
            .iter()
            .filter(|port| port.protocol == protocol)
            .map(|port| port.port.to_string())
            .collect();
        if !numbers.is_empty() {
            matches.push(format!("{} dport {} ", protocol.keyword(), set(numbers)));
        }
    }
    let (inbound, loopback) = if ports.is_empty() {
        (vec![String::new()], vec!["meta l4proto { tcp, udp } ".to_owned()])
    } else {
        (matches.clone(), matches)
    };

    let mut prerouting = String::new();
    let mut output = String::new();
    for m in &inbound {
        if !pod.ipv4.is_empty() {
            let _ = writeln!(
                prerouting,
                "        iifname \"{pod_if}\" ip daddr {pod4} {m}dnat ip to {guest4}"
            );
        }
        if !pod.ipv6.is_empty() {
            let _ = writeln!(
                prerouting,
                "        iifname \"{pod_if}\" ip6 daddr {pod6} {m}dnat ip6 to {guest6}"
            );
        }
    }
    for m in &loopback {
        if !pod.ipv4.is_empty() {
            let _ = writeln!(output, "        ip daddr 127.0.0.1 {m}dnat ip to {guest4}");
        }
    }
    if !pod.ipv4.is_empty() {
        // The guest by its other name, every TCP port (`vmlet-launcher connect guest`).
        let _ = writeln!(
            output,
            "        ip daddr {GUEST_FROM_POD} meta l4proto tcp dnat ip to {guest4}"
        );
    }
    let v4 = subnets.v4;
    let v6 = subnets.v6;
    Table {
        family: Family::Inet,
        name: "vmlet-nat".into(),
        chains: format!(
            r#"    chain prerouting {{
        type nat hook prerouting priority -100; policy accept;
{prerouting}    }}
    chain output {{
        type nat hook output priority -100; policy accept;
{output}    }}
    chain postrouting {{
        type nat hook postrouting priority 100; policy accept;
        oifname "{bridge}" ip saddr 127.0.0.1 snat ip to {gateway4}
        oifname != "{bridge}" ip saddr {v4} masquerade
        oifname != "{bridge}" ip6 saddr {v6} masquerade
    }}
"#
        ),
    }
}

/// The `masquerade` binding's operations: the bridge with the gateway addresses, forwarding, the tap, and the NAT
/// table. The pod interface keeps its name, addresses and MAC address. IPv4 is served when the pod has an IPv4
/// address, IPv6 when it has an IPv6 one, and a pod with neither has nothing to masquerade behind.
///
/// The guest's MAC address is the spec's, else the one the record keeps.
pub fn plan(request: &BindingRequest, recorded: &Recorded, names: &LinkNames) -> Result<NetworkPlan, PlanError> {
    let pod = &recorded.pod;
    let guest_mac = request.guest_mac.or(recorded.guest_mac).ok_or(PlanError::NoGuestMac)?;
    if pod.ipv4.is_empty() && pod.ipv6.is_empty() {
        return Err(PlanError::NoPodAddress("IPv4 or IPv6"));
    }
    let subnets = &request.subnets;
    let bridge = &names.bridge;
    let mut gateway: Vec<IpNet> = Vec::new();
    if !pod.ipv4.is_empty() {
        gateway.push(subnets.gateway_v4().into());
    }
    if !pod.ipv6.is_empty() {
        gateway.push(subnets.gateway_v6().into());
        gateway.push(IpNet::new(IpAddr::V6(GATEWAY_LINK_LOCAL), 64).unwrap_or_default());
    }
    let mut operations = vec![
        Operation::EnsureBridge {
            name: bridge.clone(),
            mtu: pod.mtu,
        },
        // The gateway's own addresses only: no kernel-made link-local address beside fe80::1.
        Operation::NoIpv6Addresses { link: bridge.clone() },
        Operation::BringUp {
            link: bridge.clone(),
            mac: Some(BRIDGE_MAC),
            mtu: Some(pod.mtu),
        },
        Operation::AddAddresses {
            link: bridge.clone(),
            addresses: gateway,
        },
        Operation::ForwardIpv4 {
            link: bridge.clone(),
            route_localnet: true,
        },
        Operation::ForwardIpv4 {
            link: pod.name.clone(),
            route_localnet: false,
        },
    ];
    if !pod.ipv6.is_empty() {
        operations.push(Operation::ForwardIpv6);
    }
    operations.extend([
        Operation::EnsureTap {
            name: names.tap.clone(),
        },
        Operation::NoIpv6Addresses {
            link: names.tap.clone(),
        },
        Operation::AttachPort {
            port: names.tap.clone(),
            bridge: bridge.clone(),
            mtu: pod.mtu,
        },
        Operation::LoadTables(vec![nat_table(pod, bridge, subnets, &request.ports)]),
    ]);
    if !pod.ipv4.is_empty() {
        // The guest's other name leads out of the bridge, from the gateway's address, which the guest answers
        // directly; the table's DNAT gives the connection the guest's address on its way.
        operations.push(Operation::HostRoute {
            destination: GUEST_FROM_POD,
            link: bridge.clone(),
            source: subnets.gateway_v4().addr(),
        });
    }
    Ok(NetworkPlan {
        operations,
        served_link: bridge.clone(),
        served_link_mac: LinkMac::Fixed(BRIDGE_MAC),
        server_address: Some(subnets.gateway_v4().addr()),
        tap: names.tap.clone(),
        guest_mac,
        pod_port_mac: None,
        pod: pod.clone(),
        dns: recorded.dns.clone(),
    })
}

/// A port of the spec's list, TCP unless it says UDP. The spec's validation refuses anything else first.
pub fn forwarded_port(protocol: Option<&str>, port: u32) -> Result<ForwardedPort, PlanError> {
    let protocol = match protocol.unwrap_or("TCP") {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        other => return Err(PlanError::Port(format!("{other:?} is not TCP or UDP"))),
    };
    let port = u16::try_from(port)
        .ok()
        .filter(|&port| port != 0)
        .ok_or_else(|| PlanError::Port(format!("{port} is not a port number")))?;
    Ok(ForwardedPort { protocol, port })
}

/// What the guest is served behind NAT.
pub fn guest_network(request: &BindingRequest, wired: &Wired) -> GuestNetwork {
    let subnets = &request.subnets;
    GuestNetwork {
        binding: request.binding,
        dhcpv4: dhcpv4_config(wired, subnets, &request.hostname).and_then(|config| served(&wired.served_link, config)),
        dhcpv6: dhcpv6_config(wired, subnets).and_then(|config| served(&wired.served_link, config)),
        tap: wired.tap.clone(),
        guest_mac: wired.guest_mac,
        mtu: wired.mtu,
        addresses: pod_addresses(&wired.pod),
        loopback_relays: loopback_relays(wired, subnets, &request.ports),
        router_search: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::resolv_conf::DnsConfig;

    fn pod() -> PodInterface {
        PodInterface {
            name: "eth0".into(),
            index: 2,
            mac: MacAddr([2, 0x42, 10, 244, 1, 7]),
            mtu: 1400,
            ipv4: vec!["10.244.1.7/24".parse().unwrap()],
            ipv6: vec!["fd00:10:244:1::7/64".parse().unwrap()],
            ipv6_link_local: None,
            routes: vec![],
            gateway_v4: Some(Ipv4Addr::new(10, 244, 1, 1)),
            gateway_v6: Some("fe80::1".parse().unwrap()),
            gateway_v6_link_local: None,
        }
    }

    fn defaults() -> GuestSubnets {
        GuestSubnets::parse(None, None).unwrap()
    }

    #[test]
    fn the_gateway_is_the_first_host_and_the_guest_the_second() {
        let subnets = defaults();
        assert_eq!(subnets.gateway_v4().to_string(), "10.0.2.1/24");
        assert_eq!(subnets.guest_v4().to_string(), "10.0.2.2/24");
        assert_eq!(subnets.gateway_v6().to_string(), "fd10:0:2::1/120");
        assert_eq!(subnets.guest_v6().to_string(), "fd10:0:2::2/120");
        let custom = GuestSubnets::parse(Some("192.168.7.0/29"), Some("fd99::/64")).unwrap();
        assert_eq!(custom.guest_v4().to_string(), "192.168.7.2/29");
        assert_eq!(custom.guest_v6().to_string(), "fd99::2/64");
    }

    #[test]
    fn subnets_that_cannot_hold_a_gateway_and_a_guest_are_refused() {
        for (v4, v6) in [
            (Some("10.0.2.0/31"), None),
            (Some("10.0.2.1/24"), None),
            (Some("fd10::/120"), None),
            (None, Some("fd10::/127")),
            (None, Some("10.0.0.0/8")),
        ] {
            assert!(
                matches!(GuestSubnets::parse(v4, v6), Err(PlanError::GuestSubnet(..))),
                "{v4:?} {v6:?}"
            );
        }
    }

    #[test]
    fn listed_ports_are_forwarded_from_outside_and_from_loopback() {
        let ports = [
            forwarded_port(None, 8080).unwrap(),
            forwarded_port(Some("TCP"), 22).unwrap(),
            forwarded_port(Some("UDP"), 53).unwrap(),
        ];
        let rules = nat_table(&pod(), "vb-eth0", &defaults(), &ports).ruleset();
        let lines: Vec<&str> = rules.lines().map(str::trim).collect();
        for expected in [
            "iifname \"eth0\" ip daddr { 10.244.1.7 } tcp dport { 8080, 22 } dnat ip to 10.0.2.2",
            "iifname \"eth0\" ip6 daddr { fd00:10:244:1::7 } udp dport { 53 } dnat ip6 to fd10:0:2::2",
            "ip daddr 127.0.0.1 tcp dport { 8080, 22 } dnat ip to 10.0.2.2",
            "oifname \"vb-eth0\" ip saddr 127.0.0.1 snat ip to 10.0.2.1",
            "oifname != \"vb-eth0\" ip saddr 10.0.2.0/24 masquerade",
            "oifname != \"vb-eth0\" ip6 saddr fd10:0:2::/120 masquerade",
            // The guest by its other name, from the pod itself, whatever the list.
            "ip daddr 169.254.75.11 meta l4proto tcp dnat ip to 10.0.2.2",
        ] {
            assert!(lines.contains(&expected), "{expected:?} missing from\n{rules}");
        }
        assert_eq!(lines.iter().filter(|line| line.contains("dnat")).count(), 7);
        assert!(
            !rules.contains("::1"),
            "the kernel cannot carry IPv6 loopback to the guest: {rules}"
        );
    }

    #[test]
    fn without_a_port_list_everything_is_forwarded() {
        let rules = nat_table(&pod(), "vb-eth0", &defaults(), &[]).ruleset();
        assert!(
            rules.contains("iifname \"eth0\" ip daddr { 10.244.1.7 } dnat ip to 10.0.2.2\n"),
            "{rules}"
        );
        assert!(
            rules.contains("ip daddr 127.0.0.1 meta l4proto { tcp, udp } dnat ip to 10.0.2.2\n"),
            "{rules}"
        );
    }

    #[test]
    fn an_ipv4_only_pod_gets_no_ipv6_rules_and_no_dhcpv6() {
        let pod = PodInterface { ipv6: vec![], ..pod() };
        let rules = nat_table(&pod, "vb-eth0", &defaults(), &[]).ruleset();
        assert!(!rules.contains("dnat ip6"), "{rules}");
        let wired = wired(pod);
        assert!(dhcpv6_config(&wired, &defaults()).is_none());
        assert!(dhcpv4_config(&wired, &defaults(), "vm1").is_some());
    }

    fn wired(pod: PodInterface) -> Wired {
        Wired {
            served_link: "vb-eth0".into(),
            served_link_mac: BRIDGE_MAC,
            server_address: Some(Ipv4Addr::new(10, 0, 2, 1)),
            tap: "tap-eth0".into(),
            guest_mac: MacAddr([2, 0, 0, 0, 0, 9]),
            pod_port_mac: None,
            mtu: pod.mtu,
            pod,
            dns: DnsConfig::parse("nameserver 10.96.0.10\nnameserver fd00:10:96::a\nsearch cluster.local\n"),
        }
    }

    #[test]
    fn listed_tcp_ports_are_relayed_from_ipv6_loopback_when_the_pod_has_ipv6() {
        let ports = [
            forwarded_port(None, 8080).unwrap(),
            forwarded_port(Some("UDP"), 53).unwrap(),
        ];
        let relays = loopback_relays(&wired(pod()), &defaults(), &ports);
        assert_eq!(
            relays,
            [LoopbackRelay {
                listen: "[::1]:8080".parse().unwrap(),
                guest: "[fd10:0:2::2]:8080".parse().unwrap(),
            }]
        );
        assert!(
            loopback_relays(&wired(pod()), &defaults(), &[]).is_empty(),
            "no list: nothing to listen on"
        );
        let v4_only = PodInterface {
            ipv6: Vec::new(),
            ..pod()
        };
        assert!(loopback_relays(&wired(v4_only), &defaults(), &ports).is_empty());
    }

    #[test]
    fn the_guest_is_served_its_private_addresses_with_the_bridge_as_router() {
        let wired = wired(pod());
        let v4 = dhcpv4_config(&wired, &defaults(), "vm1").unwrap();
        assert_eq!(v4.client_mac, MacAddr([2, 0, 0, 0, 0, 9]));
        assert_eq!(v4.address.to_string(), "10.0.2.2/24");
        assert_eq!(
            (v4.gateway, v4.server_id),
            (Some(Ipv4Addr::new(10, 0, 2, 1)), Ipv4Addr::new(10, 0, 2, 1))
        );
        assert_eq!(v4.dns, [Ipv4Addr::new(10, 96, 0, 10)]);
        assert_eq!((v4.mtu, v4.hostname.as_deref()), (Some(1400), Some("vm1")));
        assert_eq!(v4.validate(), Ok(()));
        let v6 = dhcpv6_config(&wired, &defaults()).unwrap();
        assert_eq!(v6.address.to_string(), "fd10:0:2::2/120");
        assert_eq!(
            v6.router,
            Some(v6::Router {
                link_local: GATEWAY_LINK_LOCAL,
                mac: Some(BRIDGE_MAC)
            })
        );
        assert_eq!(v6.dns, ["fd00:10:96::a".parse::<Ipv6Addr>().unwrap()]);
        assert_eq!(v6.validate(), Ok(()));
    }

    #[test]
    fn ports_name_tcp_or_udp() {
        assert_eq!(
            forwarded_port(Some("UDP"), 53).unwrap(),
            ForwardedPort {
                protocol: Protocol::Udp,
                port: 53
            }
        );
        assert!(forwarded_port(Some("SCTP"), 53).is_err());
        assert!(forwarded_port(None, 0).is_err());
        assert!(forwarded_port(None, 65536).is_err());
    }
}
