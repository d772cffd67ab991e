//! The `bridge` binding's plan: the guest takes the pod's IP and MAC addresses.
//!
//! The pod interface (a veth from the CNI) is renamed `<if>-nic`, loses its addresses and its MAC address, and
//! becomes a port of a new bridge `vb-<if>` next to the tap `tap-<if>` that QEMU opens. The guest's NIC gets the
//! pod interface's original MAC address. The launcher's DHCP server, on the bridge's link-local address, gives the
//! guest the pod's addresses and routes. To the pod network the guest is the pod.
//!
//! nftables rules keep the guest's DHCP, DHCPv6 and router advertisements inside the pod. They live in the `bridge` family, in a table of their own named `vmlet`, and match on the bridge port that
//! leads to the pod network. Bridge-family rules see frames as they cross the bridge, so no `br_netfilter` and no
//! ebtables are needed. They are loaded with the `nft` tool.

use std::net::{IpAddr, Ipv4Addr};
use vmlet_dhcp::MacAddr;
use vmlet_dhcp::runner as dhcpv4;
use vmlet_dhcp::v6::runner as dhcpv6;

use vmlet_netfilter::{Family, Table};

use super::plan::{LinkNames, NetworkPlan, Operation, identity_plan};
use super::{BindingRequest, GUEST_FROM_POD};
use crate::network::apply::Recorded;

/// The bridge's address, the DHCP server's identifier and the source of its replies: link-local, so it is never
/// mistaken for an address of the pod network. The same as KubeVirt's.
pub const DEFAULT_SERVER_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 75, 10);

/// What the guard keeps from crossing the pod port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guard {
    /// The launcher serves the guest (`bridge`): DHCP, DHCPv6 and router advertisements stay on the guest's side.
    KeepAddressingInPod,
    /// The pod network serves the guest (`managedTap`): its DHCP and router advertisements reach the guest, and only
    /// the pod's own stack is kept off the pod network.
    PodStackOnly,
}

/// The ruleset that guards the pod interface `pod_port`, now a port of the guest's bridge.
///
/// - `output`: frames the pod's own stack sends (the DHCP and DHCPv6 servers, the router advertisements) never
///   leave through the pod port. The stack has no business on the pod network once the guest owns the pod's
///   address, and the servers must answer only the guest.
/// - `forward`: DHCP, DHCPv6 and router advertisements between the guest and the pod network are dropped both ways:
///   the guest's only servers and router advertisements are the launcher's (one on the pod network would give the
///   guest a router or an address of its own), and a server or router in the guest answers no one outside.
/// - `input`: the pod's DHCP servers hear only the guest; and no router advertisement reaches the pod's stack, from
///   the pod network or from the guest, so the bridge never configures an address of its own from one (it keeps
///   IPv6 for its link-local address, which later serves router advertisements to the guest).
///
/// Loading it replaces any earlier copy at once ([`Table::ruleset`]).
pub fn guard_table(pod_port: &str, guard: Guard) -> Table {
    let (server4, client4) = (dhcpv4::SERVER_PORT, dhcpv4::CLIENT_PORT);
    let (server6, client6) = (dhcpv6::SERVER_PORT, dhcpv6::CLIENT_PORT);
    let output = format!(
        r#"    chain output {{
        type filter hook output priority filter; policy accept;
        oifname "{pod_port}" drop
    }}
"#
    );
    let chains = match guard {
        Guard::PodStackOnly => output,
        Guard::KeepAddressingInPod => format!(
            r#"{output}    chain forward {{
        type filter hook forward priority filter; policy accept;
        oifname "{pod_port}" udp dport {{ {server4}, {client4}, {client6}, {server6} }} drop
        iifname "{pod_port}" udp dport {{ {server4}, {client4}, {client6}, {server6} }} drop
        oifname "{pod_port}" icmpv6 type nd-router-advert drop
        iifname "{pod_port}" icmpv6 type nd-router-advert drop
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "{pod_port}" udp dport {{ {server4}, {server6} }} drop
        icmpv6 type nd-router-advert drop
    }}
"#
        ),
    };
    Table {
        family: Family::Bridge,
        name: "vmlet".into(),
        chains,
    }
}

/// The ruleset that lets the pod's own stack reach the guest over TCP as [`GUEST_FROM_POD`], statelessly, as the
/// frames cross the bridge:
///
/// - `output`: what the pod sends to the guest's other name (a host route and a permanent neighbour entry take it
///   to the guest's MAC address) gets the guest's address as its destination.
/// - `prerouting`: what the guest answers to the bridge's address `server` goes to the guest's router's MAC address,
///   as everything off its subnet does; it is turned to the bridge itself, and its source becomes the guest's other
///   name again, which the pod's stack does not take for its own address.
///
/// nftables fixes the IP and TCP checksums of the addresses it rewrites.
pub fn guest_access_table(tap: &str, bridge_mac: MacAddr, guest: Ipv4Addr, server: Ipv4Addr) -> Table {
    let alias = GUEST_FROM_POD;
    Table {
        family: Family::Bridge,
        name: "vmlet-guest-access".into(),
        chains: format!(
            r#"    chain output {{
        type filter hook output priority filter; policy accept;
        ip daddr {alias} meta l4proto tcp ip daddr set {guest}
    }}
    chain prerouting {{
        type filter hook prerouting priority filter; policy accept;
        iifname "{tap}" ip saddr {guest} ip daddr {server} meta l4proto tcp ether daddr set {bridge_mac} meta pkttype set host ip saddr set {alias}
    }}
"#
        ),
    }
}

/// The `bridge` binding's operations, which `managedTap` shares without a `server` address.
///
/// The guard comes first, so that nothing the pod's stack sends on the bridge ever reaches the pod network; its
/// rules match the port by name, so they hold from the moment the pod interface takes it. The pod reaches its guest
/// by [`GUEST_FROM_POD`] only when the launcher serves the guest, over IPv4.
pub fn plan(request: &BindingRequest, recorded: &Recorded, names: &LinkNames, server: Option<Ipv4Addr>) -> NetworkPlan {
    let pod = &recorded.pod;
    let guard = match server {
        Some(_) => Guard::KeepAddressingInPod,
        None => Guard::PodStackOnly,
    };
    let bridge = &names.bridge;
    let mut operations = vec![
        Operation::LoadTables(vec![guard_table(&names.pod_port, guard)]),
        Operation::EnsureBridge {
            name: bridge.clone(),
            mtu: pod.mtu,
        },
        match server {
            Some(address) => Operation::ServeFrom {
                link: bridge.clone(),
                address,
            },
            // Nothing to serve: the bridge has no business on either side, not even over IPv6, where it would
            // otherwise configure itself from the pod network's router advertisements.
            None => Operation::NoIpv6Addresses { link: bridge.clone() },
        },
        Operation::BringUp {
            link: bridge.clone(),
            mac: None,
            mtu: None,
        },
        Operation::FreePodInterface {
            name: pod.name.clone(),
            index: pod.index,
            mac: pod.mac,
            rename_to: names.pod_port.clone(),
        },
    ];
    let attach = |port: &String| Operation::AttachPort {
        port: port.clone(),
        bridge: bridge.clone(),
        mtu: pod.mtu,
    };
    operations.extend([
        Operation::NoIpv6Addresses {
            link: names.pod_port.clone(),
        },
        attach(&names.pod_port),
        Operation::StopLearning {
            port: names.pod_port.clone(),
        },
        Operation::EnsureTap {
            name: names.tap.clone(),
        },
        Operation::NoIpv6Addresses {
            link: names.tap.clone(),
        },
        attach(&names.tap),
    ]);
    let mut plan = identity_plan(request, recorded, names, operations, bridge, server);
    if let (Some(server), Some(guest)) = (server, pod.ipv4.first()) {
        plan.operations.extend([
            Operation::LoadGuestAccessTable {
                bridge: bridge.clone(),
                tap: names.tap.clone(),
                guest: guest.addr(),
                server,
            },
            Operation::HostRoute {
                destination: GUEST_FROM_POD,
                link: bridge.clone(),
                source: server,
            },
            Operation::Neighbour {
                link: bridge.clone(),
                ip: IpAddr::V4(GUEST_FROM_POD),
                mac: plan.guest_mac,
            },
        ]);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_names_the_pod_port_in_every_rule() {
        let rules = guard_table("eth0-nic", Guard::KeepAddressingInPod).ruleset();
        assert!(rules.starts_with("add table bridge vmlet\ndelete table bridge vmlet\n"));
        let rule_lines: Vec<&str> = rules
            .lines()
            .map(str::trim)
            .filter(|line| line.ends_with(" drop"))
            .collect();
        assert_eq!(rule_lines.len(), 7);
        assert_eq!(
            rule_lines.iter().filter(|line| line.contains("\"eth0-nic\"")).count(),
            6
        );
        let managed = guard_table("eth0-nic", Guard::PodStackOnly).ruleset();
        assert!(managed.contains("oifname \"eth0-nic\" drop"));
        assert!(
            !managed.contains("udp"),
            "the pod network's DHCP reaches the guest: {managed}"
        );
    }

    #[test]
    fn the_guest_is_reached_by_its_other_name_and_answers_to_it() {
        let mac: MacAddr = "02:fa:4e:00:00:07".parse().unwrap();
        let rules = guest_access_table("tap-eth0", mac, Ipv4Addr::new(10, 244, 1, 7), DEFAULT_SERVER_ADDRESS).ruleset();
        assert!(
            rules.contains("ip daddr 169.254.75.11 meta l4proto tcp ip daddr set 10.244.1.7\n"),
            "{rules}"
        );
        assert!(
            rules.contains(
                "iifname \"tap-eth0\" ip saddr 10.244.1.7 ip daddr 169.254.75.10 meta l4proto tcp \
                 ether daddr set 02:fa:4e:00:00:07 meta pkttype set host ip saddr set 169.254.75.11\n"
            ),
            "{rules}"
        );
    }
}
