//! The `tap` binding: the guest takes the pod's IP and MAC addresses, and the pod interface and the guest's tap are
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

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rtnetlink::Handle;
use tracing::info;
use vmlet_dhcp::MacAddr;
use vmlet_dhcp::runner as dhcpv4;
use vmlet_dhcp::v6::ra::{ROUTER_ADVERTISEMENT, ROUTER_SOLICITATION};
use vmlet_dhcp::v6::runner as dhcpv6;
use vmlet_netfilter::{Family, Filter, IngressFilters, Table};

use super::bridge::DEFAULT_SERVER_ADDRESS;
use super::error::ApplyError;
use super::plumbing::{
    LinkNames, PodRecord, Recorded, bring_up_silent, ensure_placeholder, ensure_tap, ethernet_address,
    free_pod_interface, serve_from,
};
use super::pod_interface::PodInterface;
use super::resolv_conf::DnsConfig;

/// How to hand one pod interface to the guest over tc redirects.
#[derive(Clone, Debug)]
pub(crate) struct TapBinding {
    pub(crate) interface: String,
    pub(crate) resolv_conf: PathBuf,
    pub(crate) state_file: PathBuf,
}

/// What the binding made, for the servers and the domain definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TapSetup {
    pub(crate) tap: String,
    /// The tap's hardware address, the source of what the launcher serves the guest over IPv6.
    pub(crate) tap_mac: MacAddr,
    /// The pod interface's original MAC address, now the guest's.
    pub(crate) guest_mac: MacAddr,
    /// The pod interface's MAC address since it gave the guest its own.
    pub(crate) pod_port_mac: MacAddr,
    pub(crate) mtu: u32,
    /// The tap's own address, the DHCP server's.
    pub(crate) server_address: Ipv4Addr,
    pub(crate) pod: PodInterface,
    pub(crate) dns: DnsConfig,
}

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
pub(crate) fn ingress_filters(pod_port: &str, tap: &str) -> [IngressFilters; 2] {
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
pub(crate) fn table(pod_port: &str, tap: &str) -> Table {
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

impl TapBinding {
    /// The binding of `interface`, with its state file `network-<interface>.json` in `run_dir`.
    pub(crate) fn new(interface: &str, run_dir: &Path, resolv_conf: &Path) -> TapBinding {
        TapBinding {
            interface: interface.to_owned(),
            resolv_conf: resolv_conf.to_owned(),
            state_file: run_dir.join(format!("network-{interface}.json")),
        }
    }

    /// Rewires the pod network for the guest, or finishes what an earlier launcher in this pod started.
    pub(crate) async fn setup(&self, handle: &Handle) -> Result<TapSetup, ApplyError> {
        let names = LinkNames::for_interface(&self.interface)?;
        let record = PodRecord {
            interface: &self.interface,
            resolv_conf: &self.resolv_conf,
            state_file: &self.state_file,
        };
        let Recorded { pod, dns, .. } = record
            .load_or_record(handle, Some(&names.pod_port), || Ok(None))
            .await?;
        // First, so that nothing the pod's stack sends ever reaches the pod network once it is renamed.
        vmlet_netfilter::replace_tables(&[table(&names.pod_port, &names.tap)]).map_err(ApplyError::Nft)?;
        free_pod_interface(handle, &pod, &names).await?;
        bring_up_silent(handle, pod.index, &names.pod_port, pod.mtu).await?;
        let tap = ensure_tap(handle, &names.tap).await?;
        let tap_index = tap.header.index;
        serve_from(handle, tap_index, &names.tap, IpAddr::V4(DEFAULT_SERVER_ADDRESS)).await?;
        bring_up_silent(handle, tap_index, &names.tap, pod.mtu).await?;
        vmlet_netfilter::replace_ingress_filters(&ingress_filters(&names.pod_port, &names.tap))
            .map_err(ApplyError::Tc)?;
        ensure_placeholder(handle, &pod, &names.placeholder).await?;
        let tap_mac = ethernet_address(handle, tap_index, &names.tap).await?;
        let pod_port_mac = ethernet_address(handle, pod.index, &names.pod_port).await?;
        info!(
            interface = %pod.name,
            tap = %names.tap,
            guest_mac = %pod.mac,
            "pod network handed to the guest over tc redirects"
        );
        Ok(TapSetup {
            tap: names.tap,
            tap_mac,
            guest_mac: pod.mac,
            pod_port_mac,
            mtu: pod.mtu,
            server_address: DEFAULT_SERVER_ADDRESS,
            pod,
            dns,
        })
    }
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
