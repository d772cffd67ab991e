//! The `tap` binding's plan: the guest takes the pod's IP and MAC addresses, and the pod interface and the guest's tap are
//! joined by tc redirects, with no bridge between them.
//!
//! The pod interface is renamed `<if>-nic`, loses its addresses and its MAC address, as under `bridge`, and a
//! placeholder keeps the pod's addresses in view under the original name. Each of the pod interface and the tap
//! `tap-<if>` gets a `clsact` qdisc whose ingress filters send every frame out of the other one (`mirred egress
//! redirect`), before the pod's own stack sees it: the pod's addresses and MAC belong to the guest alone.
//!
//! Frames the guest sends to the launcher's servers (DHCPv4, DHCPv6, router solicitations) are not redirected: they
//! go up the tap's own stack, where the servers listen (DHCPv4 on the tap's link-local 169.254.75.10, DHCPv6 and
//! router advertisements on a packet socket). So are DHCP answers and router advertisements from either side, which
//! nftables then drops: the guest's only servers and router are the launcher's, and a server in the guest answers no
//! one outside. Everything that reaches the pod interface's own stack is dropped too.
//!
//! The tc filters are `u32` matches (the classifier every kernel has) on fixed offsets: IPv4 with a 20-byte header,
//! IPv6 with no extension header before UDP or ICMPv6, as DHCP and neighbour discovery send them.

use vmlet_dhcp::runner as dhcpv4;
use vmlet_dhcp::v6::ra::{ROUTER_ADVERTISEMENT, ROUTER_SOLICITATION};
use vmlet_dhcp::v6::runner as dhcpv6;
use vmlet_netfilter::{Family, Filter, IngressFilters, Table};

use super::BindingRequest;
use super::bridge::DEFAULT_SERVER_ADDRESS;
use super::plan::{LinkNames, NetworkPlan, Operation, identity_plan};
use crate::network::apply::Recorded;

/// UDP ports and ICMPv6 types of the frames that stay in the pod.
const DHCPV4_SERVER: u16 = dhcpv4::SERVER_PORT;
const DHCPV4_CLIENT: u16 = dhcpv4::CLIENT_PORT;
const DHCPV6_CLIENT: u16 = dhcpv6::CLIENT_PORT;
const DHCPV6_SERVER: u16 = dhcpv6::SERVER_PORT;

/// What a frame kept in the pod is, for a `u32` match.
#[derive(Clone, Copy)]
enum Kept {
    Udp4(u16),
    Udp6(u16),
    Icmpv6(u8),
}

impl Kept {
    fn filter(self) -> String {
        match self {
            // u32 offsets are from the network header: IPv4 protocol at 9, destination port at 20 + 2;
            // IPv6 next header at 6, destination port at 40 + 2, ICMPv6 type at 40.
            Kept::Udp4(port) => format!("protocol ip u32 match ip protocol 17 0xff match ip dport {port} 0xffff"),
            Kept::Udp6(port) => format!("protocol ipv6 u32 match ip6 protocol 17 0xff match ip6 dport {port} 0xffff"),
            Kept::Icmpv6(kind) => format!("protocol ipv6 u32 match ip6 protocol 58 0xff match u8 {kind} 0xff at 40"),
        }
    }
}

/// The ingress filters that join `pod_port` and `tap`.
///
/// A filter with a class and no action ends the search and lets the frame go on up the receiving link's stack; the
/// last filter of each link, matching everything, redirects.
pub fn ingress_filters(pod_port: &str, tap: &str) -> [IngressFilters; 2] {
    let from_guest = [
        Kept::Udp4(DHCPV4_SERVER),
        Kept::Udp6(DHCPV6_SERVER),
        Kept::Icmpv6(ROUTER_SOLICITATION),
        Kept::Udp4(DHCPV4_CLIENT),
        Kept::Udp6(DHCPV6_CLIENT),
        Kept::Icmpv6(ROUTER_ADVERTISEMENT),
    ];
    let from_pod_network = [
        Kept::Udp4(DHCPV4_CLIENT),
        Kept::Udp6(DHCPV6_CLIENT),
        Kept::Icmpv6(ROUTER_ADVERTISEMENT),
    ];
    let link = |link: &str, kept: &[Kept], peer: &str| IngressFilters {
        link: link.to_owned(),
        filters: (1..)
            .zip(kept)
            .map(|(priority, kept)| Filter {
                priority,
                spec: format!("{} classid 1:1", kept.filter()),
            })
            .chain(std::iter::once(Filter {
                priority: 100,
                spec: format!("protocol all u32 match u32 0 0 action mirred egress redirect dev {peer}"),
            }))
            .collect(),
    };
    [link(tap, &from_guest, pod_port), link(pod_port, &from_pod_network, tap)]
}

/// The nftables rules for what the tc filters keep in the pod: the servers hear the guest's requests, and nothing
/// else that reached a stack in the pod goes anywhere.
pub fn table(pod_port: &str, tap: &str) -> Table {
    Table {
        family: Family::Inet,
        name: "vmlet-tap".into(),
        chains: format!(
            r#"    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{pod_port}" drop
        iifname "{tap}" udp dport {{ {DHCPV4_CLIENT}, {DHCPV6_CLIENT} }} drop
        iifname "{tap}" icmpv6 type nd-router-advert drop
    }}
    chain output {{
        type filter hook output priority filter; policy accept;
        oifname "{pod_port}" drop
    }}
"#
        ),
    }
}

/// The `tap` binding's operations. The table comes first, so that nothing the pod's stack sends ever reaches the pod
/// network once the pod interface is renamed.
pub fn plan(request: &BindingRequest, recorded: &Recorded, names: &LinkNames) -> NetworkPlan {
    let pod = &recorded.pod;
    let bring_up_silent = |link: &String| {
        [
            Operation::NoIpv6Addresses { link: link.clone() },
            Operation::BringUp {
                link: link.clone(),
                mac: None,
                mtu: Some(pod.mtu),
            },
        ]
    };
    let mut operations = vec![
        Operation::LoadTables(vec![table(&names.pod_port, &names.tap)]),
        Operation::FreePodInterface {
            name: pod.name.clone(),
            index: pod.index,
            mac: pod.mac,
            rename_to: names.pod_port.clone(),
        },
    ];
    operations.extend(bring_up_silent(&names.pod_port));
    operations.extend([
        Operation::EnsureTap {
            name: names.tap.clone(),
        },
        Operation::ServeFrom {
            link: names.tap.clone(),
            address: DEFAULT_SERVER_ADDRESS,
        },
    ]);
    operations.extend(bring_up_silent(&names.tap));
    operations.push(Operation::LoadIngressFilters(
        ingress_filters(&names.pod_port, &names.tap).into(),
    ));
    identity_plan(
        request,
        recorded,
        names,
        operations,
        &names.tap,
        Some(DEFAULT_SERVER_ADDRESS),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guests_requests_stay_in_the_pod_and_everything_else_is_redirected() {
        let batch: String = ingress_filters("eth0-nic", "tap-eth0")
            .iter()
            .map(IngressFilters::batch)
            .collect();
        let lines: Vec<&str> = batch.lines().collect();
        assert_eq!(lines.len(), 2 * 3 + 6 + 3, "{batch}");
        assert_eq!(lines[0], "qdisc replace dev tap-eth0 clsact");
        assert_eq!(lines[1], "filter del dev tap-eth0 ingress");
        assert_eq!(
            lines[2],
            "filter add dev tap-eth0 ingress prio 1 protocol ip u32 match ip protocol 17 0xff match ip dport 67 0xffff classid 1:1"
        );
        assert!(
            lines[4].contains("match ip6 protocol 58 0xff match u8 133 0xff at 40"),
            "{}",
            lines[4]
        );
        assert_eq!(
            lines[8],
            "filter add dev tap-eth0 ingress prio 100 protocol all u32 match u32 0 0 action mirred egress redirect dev eth0-nic"
        );
        assert_eq!(
            lines.last().copied(),
            Some(
                "filter add dev eth0-nic ingress prio 100 protocol all u32 match u32 0 0 action mirred egress redirect dev tap-eth0"
            )
        );
        let from_pod_network: Vec<&str> = lines
            .iter()
            .filter(|line| line.starts_with("filter add dev eth0-nic") && line.ends_with("classid 1:1"))
            .copied()
            .collect();
        assert_eq!(
            from_pod_network.len(),
            3,
            "DHCP answers and router advertisements: {from_pod_network:?}"
        );
        assert!(
            from_pod_network
                .iter()
                .all(|line| !line.contains("dport 67 ") && !line.contains("dport 547 ")),
            "requests from the pod network go to the guest: {from_pod_network:?}"
        );
    }

    #[test]
    fn only_what_tc_keeps_in_the_pod_is_dropped() {
        let rules = table("eth0-nic", "tap-eth0").ruleset();
        assert!(rules.starts_with("add table inet vmlet-tap\ndelete table inet vmlet-tap\n"));
        assert!(rules.contains("iifname \"eth0-nic\" drop"));
        assert!(rules.contains("oifname \"eth0-nic\" drop"));
        assert!(rules.contains("iifname \"tap-eth0\" udp dport { 68, 546 } drop"));
        assert!(!rules.contains("67"), "the guest's requests reach the servers: {rules}");
    }
}
