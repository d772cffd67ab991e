//! What the CNI gave the pod: its interface, with the addresses and routes the guest will take over.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressMessage, AddressScope};
use rtnetlink::packet_route::link::LinkMessage;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteType};
use serde::{Deserialize, Serialize};
use vmlet_dhcp::MacAddr;

use super::netlink::{self, Netlink};

/// Why the pod interface could not be described.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("interface {0:?} not found")]
    NotFound(String),
    #[error("interface {name:?} has no {missing}")]
    Incomplete { name: String, missing: &'static str },
    #[error("cannot list the {what}")]
    Query {
        what: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
}

/// The pod's interface as the CNI set it up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInterface {
    pub name: String,
    pub index: u32,
    pub mac: MacAddr,
    pub mtu: u32,
    /// Global IPv4 addresses with their prefix lengths, primary first.
    pub ipv4: Vec<Ipv4Net>,
    /// Global IPv6 addresses with their prefix lengths.
    pub ipv6: Vec<Ipv6Net>,
    /// The interface's own link-local address, kept apart from the global ones.
    pub ipv6_link_local: Option<Ipv6Addr>,
    /// The routes of the main table that go out through the interface, IPv4 then IPv6.
    pub routes: Vec<PodRoute>,
    pub gateway_v4: Option<Ipv4Addr>,
    pub gateway_v6: Option<Ipv6Addr>,
    /// The link-local address of a global `gateway_v6`, found on the link (see [`super::gateway`]); router
    /// advertisements must come from a router's link-local address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_v6_link_local: Option<Ipv6Addr>,
}

/// A route through the pod interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRoute {
    pub destination: IpNet,
    /// None for a destination directly on the link.
    pub gateway: Option<IpAddr>,
    /// The gateway is taken to be on the link even though no address's prefix covers it (`onlink`).
    pub on_link: bool,
    pub metric: u32,
}

/// Describes the interface `name` as it is now.
pub async fn discover(handle: &impl Netlink, name: &str) -> Result<PodInterface, DiscoveryError> {
    let query = |what| move |source| DiscoveryError::Query { what, source };
    let link = handle
        .link_by_name(name)
        .await
        .map_err(query("links"))?
        .ok_or_else(|| DiscoveryError::NotFound(name.to_owned()))?;
    let addresses = handle
        .addresses_of(link.header.index)
        .await
        .map_err(query("addresses"))?;
    // One dump of every family and table (a dump per family would get IPv4 routes twice on a node without IPv6,
    // whose kernel answers an IPv6 dump with all families); `from_netlink` keeps what it needs.
    let routes: Vec<RouteMessage> = handle.routes().await.map_err(query("routes"))?;
    PodInterface::from_netlink(&link, &addresses, &routes)
}

impl PodInterface {
    /// The interface described by its link message, picking its own addresses and routes out of `addresses` and
    /// `routes`.
    pub fn from_netlink(
        link: &LinkMessage,
        addresses: &[AddressMessage],
        routes: &[RouteMessage],
    ) -> Result<PodInterface, DiscoveryError> {
        let index = link.header.index;
        let name = netlink::link_name(link).unwrap_or_default().to_owned();
        let incomplete = |missing| DiscoveryError::Incomplete {
            name: name.clone(),
            missing,
        };
        let mac = netlink::link_mac(link).ok_or_else(|| incomplete("Ethernet address"))?;
        let mtu = netlink::link_mtu(link).ok_or_else(|| incomplete("MTU"))?;

        let mut ipv4 = Vec::new();
        let mut ipv6 = Vec::new();
        let mut ipv6_link_local = None;
        for message in addresses.iter().filter(|message| message.header.index == index) {
            match netlink::address_net(message) {
                Some(IpNet::V4(net)) if netlink::address_is_global(message) => ipv4.push(net),
                Some(IpNet::V6(net)) if netlink::address_is_global(message) => ipv6.push(net),
                Some(IpNet::V6(net)) if message.header.scope == AddressScope::Link => {
                    ipv6_link_local.get_or_insert(net.addr());
                }
                _ => {}
            }
        }

        let mut routes: Vec<PodRoute> = routes.iter().filter_map(|route| pod_route(route, index)).collect();
        // IPv4 first, each family in the kernel's order.
        routes.sort_by_key(|route| route.destination.addr().is_ipv6());
        let default_gateway = |v6: bool| {
            routes
                .iter()
                .filter(|route| route.destination.prefix_len() == 0 && route.destination.addr().is_ipv6() == v6)
                .filter_map(|route| Some((route.metric, route.gateway?)))
                .min_by_key(|(metric, _)| *metric)
                .map(|(_, gateway)| gateway)
        };
        let gateway_v4 = match default_gateway(false) {
            Some(IpAddr::V4(gateway)) => Some(gateway),
            _ => None,
        };
        let gateway_v6 = match default_gateway(true) {
            Some(IpAddr::V6(gateway)) => Some(gateway),
            _ => None,
        };

        Ok(PodInterface {
            name,
            index,
            mac,
            mtu,
            ipv4,
            ipv6,
            ipv6_link_local,
            routes,
            gateway_v4,
            gateway_v6,
            gateway_v6_link_local: None,
        })
    }
}

/// The route if it is an IPv4 or IPv6 unicast route of the main table through the interface `index`. IPv6
/// link-local and multicast destinations are left out: every IPv6 link has them, the guest's included.
fn pod_route(route: &RouteMessage, index: u32) -> Option<PodRoute> {
    let mut table = u32::from(route.header.table);
    let mut oif = None;
    let mut destination = None;
    let mut gateway = None;
    let mut metric = 0;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Table(id) => table = *id,
            RouteAttribute::Oif(id) => oif = Some(*id),
            RouteAttribute::Destination(address) => destination = ip(address),
            RouteAttribute::Gateway(address) => gateway = ip(address),
            RouteAttribute::Priority(priority) => metric = *priority,
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || route.header.kind != RouteType::Unicast || oif != Some(index) {
        return None;
    }
    let unspecified = match route.header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    // A default route has no destination attribute.
    let destination = IpNet::new(
        destination.unwrap_or(unspecified),
        route.header.destination_prefix_length,
    )
    .ok()?;
    if let IpNet::V6(net) = destination
        && (net.addr().is_unicast_link_local() || net.addr().is_multicast())
    {
        return None;
    }
    Some(PodRoute {
        destination,
        gateway,
        on_link: route.header.flags.contains(RouteFlags::Onlink),
        metric,
    })
}

fn ip(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use rtnetlink::packet_route::link::LinkAttribute;
    use rtnetlink::{AddressMessageBuilder, LinkUnspec, RouteMessageBuilder};

    const INDEX: u32 = 2;
    const MAC: MacAddr = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x07]);

    pub fn link() -> LinkMessage {
        LinkUnspec::new_with_index(INDEX)
            .name("eth0")
            .address(MAC.0.to_vec())
            .mtu(1400)
            .build()
    }

    pub fn v4_address(index: u32, net: &str, scope: AddressScope) -> AddressMessage {
        let net: Ipv4Net = net.parse().unwrap();
        let mut message = AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(net.addr(), net.prefix_len())
            .build();
        message.header.scope = scope;
        message
    }

    pub fn v6_address(index: u32, net: &str, scope: AddressScope) -> AddressMessage {
        let net: Ipv6Net = net.parse().unwrap();
        let mut message = AddressMessageBuilder::<Ipv6Addr>::new()
            .index(index)
            .address(net.addr(), net.prefix_len())
            .build();
        message.header.scope = scope;
        message
    }

    pub fn v4_route(destination: &str, gateway: Option<&str>, oif: u32) -> RouteMessage {
        let net: Ipv4Net = destination.parse().unwrap();
        let mut builder = RouteMessageBuilder::<Ipv4Addr>::new().output_interface(oif);
        if net.prefix_len() > 0 {
            builder = builder.destination_prefix(net.addr(), net.prefix_len());
        }
        if let Some(gateway) = gateway {
            builder = builder.gateway(gateway.parse().unwrap());
        }
        builder.build()
    }

    pub fn v6_route(destination: &str, gateway: Option<&str>, metric: u32) -> RouteMessage {
        let net: Ipv6Net = destination.parse().unwrap();
        let mut builder = RouteMessageBuilder::<Ipv6Addr>::new()
            .output_interface(INDEX)
            .priority(metric);
        if net.prefix_len() > 0 {
            builder = builder.destination_prefix(net.addr(), net.prefix_len());
        }
        if let Some(gateway) = gateway {
            builder = builder.gateway(gateway.parse().unwrap());
        }
        builder.build()
    }

    /// A route as discovery reports it, from text.
    pub fn route(destination: &str, gateway: Option<&str>, on_link: bool, metric: u32) -> PodRoute {
        PodRoute {
            destination: destination.parse().unwrap(),
            gateway: gateway.map(|gateway| gateway.parse().unwrap()),
            on_link,
            metric,
        }
    }

    #[test]
    fn dual_stack_interface_is_described() {
        let addresses = [
            v4_address(INDEX, "10.244.1.7/24", AddressScope::Universe),
            v4_address(INDEX, "10.244.9.7/16", AddressScope::Universe),
            v4_address(INDEX, "169.254.3.3/16", AddressScope::Link),
            v4_address(7, "10.0.0.1/8", AddressScope::Universe),
            v6_address(INDEX, "fd00:10:244:1::7/64", AddressScope::Universe),
            v6_address(INDEX, "fe80::858:aff:fef4:107/64", AddressScope::Link),
            v6_address(1, "::1/128", AddressScope::Host),
        ];
        let mut local_table = v4_route("10.244.1.7/32", None, INDEX);
        local_table.header.table = 255;
        local_table.header.kind = RouteType::Local;
        let mut other_family = v4_route("0.0.0.0/0", None, INDEX);
        other_family.header.address_family = AddressFamily::Mpls;
        let mut on_link = v4_route("10.96.0.0/12", Some("10.244.99.1"), INDEX);
        on_link.header.flags |= RouteFlags::Onlink;
        let routes = [
            v6_route("::/0", Some("fe80::1"), 1024),
            v4_route("0.0.0.0/0", Some("10.244.1.1"), INDEX),
            v4_route("10.244.1.0/24", None, INDEX),
            on_link,
            v4_route("192.168.0.0/16", Some("10.0.0.254"), 7),
            local_table,
            other_family,
            v6_route("fd00:10:244:1::/64", None, 256),
            v6_route("fe80::/64", None, 256),
            v6_route("ff00::/8", None, 256),
        ];

        let pod = PodInterface::from_netlink(&link(), &addresses, &routes).unwrap();

        assert_eq!(
            pod,
            PodInterface {
                name: "eth0".to_owned(),
                index: INDEX,
                mac: MAC,
                mtu: 1400,
                ipv4: vec!["10.244.1.7/24".parse().unwrap(), "10.244.9.7/16".parse().unwrap()],
                ipv6: vec!["fd00:10:244:1::7/64".parse().unwrap()],
                ipv6_link_local: Some("fe80::858:aff:fef4:107".parse().unwrap()),
                routes: vec![
                    route("0.0.0.0/0", Some("10.244.1.1"), false, 0),
                    route("10.244.1.0/24", None, false, 0),
                    route("10.96.0.0/12", Some("10.244.99.1"), true, 0),
                    route("::/0", Some("fe80::1"), false, 1024),
                    route("fd00:10:244:1::/64", None, false, 256),
                ],
                gateway_v4: Some("10.244.1.1".parse().unwrap()),
                gateway_v6: Some("fe80::1".parse().unwrap()),
                gateway_v6_link_local: None,
            }
        );
    }

    #[test]
    fn calico_style_point_to_point_interface_is_described() {
        let addresses = [v4_address(INDEX, "10.244.1.7/32", AddressScope::Universe)];
        let routes = [
            v4_route("169.254.1.1/32", None, INDEX),
            v4_route("0.0.0.0/0", Some("169.254.1.1"), INDEX),
        ];

        let pod = PodInterface::from_netlink(&link(), &addresses, &routes).unwrap();

        assert_eq!(pod.ipv4, vec!["10.244.1.7/32".parse::<Ipv4Net>().unwrap()]);
        assert_eq!(
            pod.routes,
            vec![
                route("169.254.1.1/32", None, false, 0),
                route("0.0.0.0/0", Some("169.254.1.1"), false, 0)
            ]
        );
        assert_eq!(pod.gateway_v4, Some(Ipv4Addr::new(169, 254, 1, 1)));
        assert_eq!((pod.gateway_v6, pod.ipv6_link_local), (None, None));
        assert!(pod.ipv6.is_empty());
    }

    #[test]
    fn default_gateway_is_the_one_with_the_lowest_metric() {
        let routes = [
            v6_route("::/0", Some("fe80::2"), 1024),
            v6_route("::/0", Some("fe80::1"), 100),
        ];
        let pod = PodInterface::from_netlink(&link(), &[], &routes).unwrap();
        assert_eq!(pod.gateway_v6, Some("fe80::1".parse().unwrap()));
        assert_eq!(pod.gateway_v4, None);
    }

    #[test]
    fn interface_without_ethernet_address_is_refused() {
        let mut link = link();
        link.attributes
            .retain(|attribute| !matches!(attribute, LinkAttribute::Address(_)));
        let err = PodInterface::from_netlink(&link, &[], &[]).unwrap_err();
        assert_eq!(err.to_string(), "interface \"eth0\" has no Ethernet address");
    }
}
