//! The requests the bindings make of the kernel, behind the [`Netlink`] trait, and readers for the attributes of
//! rtnetlink's messages.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::{AfSpecUnspec, InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{RouteMessage, RouteScope};
use rtnetlink::{Error, Handle, RouteMessageBuilder};
use vmlet_dhcp::MacAddr;
use vmlet_netfilter::{IngressFilters, Table, ToolError};

use super::tap_device::{self, TapError};

/// What a binding asks of the pod's network namespace: netlink requests, and the few that take another way (a tap
/// is made with an ioctl, tables and filters by their tools, IPv6 forwarding is a sysctl). [`Handle`] makes them
/// for real; the tests' recording fake keeps what they would change in memory, so the steps that make them are
/// tested without root.
pub trait Netlink {
    /// The link named `name`, if there is one.
    async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>, Error>;
    /// The link with index `index`, if there is one.
    async fn link_by_index(&self, index: u32) -> Result<Option<LinkMessage>, Error>;
    /// The addresses of the link `index`, of every family and scope.
    async fn addresses_of(&self, index: u32) -> Result<Vec<AddressMessage>, Error>;
    /// Every route of every family and table.
    async fn routes(&self) -> Result<Vec<RouteMessage>, Error>;
    async fn add_link(&self, link: LinkMessage) -> Result<(), Error>;
    /// Changes what `link` names of the link with its index.
    async fn set_link(&self, link: LinkMessage) -> Result<(), Error>;
    /// Changes a bridge port's settings.
    async fn set_port(&self, port: LinkMessage) -> Result<(), Error>;
    async fn add_address(&self, index: u32, net: IpNet, flags: AddressFlags) -> Result<(), Error>;
    async fn delete_address(&self, address: AddressMessage) -> Result<(), Error>;
    /// Routes `destination` (a /32) out of the link `index` from `source`, in place of any route to it.
    async fn replace_host_route(&self, destination: Ipv4Addr, index: u32, source: Ipv4Addr) -> Result<(), Error>;
    /// Says, permanently, that `ip` is at `mac` on the link `index`.
    async fn replace_neighbour(&self, index: u32, ip: IpAddr, mac: MacAddr) -> Result<(), Error>;
    /// Creates the persistent tap `name` (see [`tap_device::create_persistent_tap`]).
    fn create_tap(&self, name: &str) -> Result<(), TapError>;
    fn replace_tables(&self, tables: &[Table]) -> Result<(), ToolError>;
    fn replace_ingress_filters(&self, links: &[IngressFilters]) -> Result<(), ToolError>;
    /// Turns on IPv6 forwarding in the namespace; whether it was off.
    fn enable_ipv6_forwarding(&self) -> std::io::Result<bool>;
}

/// IPv6 forwarding has no per-link netlink setting: it is the namespace's sysctl, which a pod may set (a namespaced
/// sysctl) when its security context allows it.
pub const IPV6_FORWARDING: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

impl Netlink for Handle {
    async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>, Error> {
        absent_as_none(self.link().get().match_name(name).execute().try_next().await)
    }

    async fn link_by_index(&self, index: u32) -> Result<Option<LinkMessage>, Error> {
        absent_as_none(self.link().get().match_index(index).execute().try_next().await)
    }

    async fn addresses_of(&self, index: u32) -> Result<Vec<AddressMessage>, Error> {
        self.address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
    }

    async fn routes(&self) -> Result<Vec<RouteMessage>, Error> {
        self.route()
            .get(RouteMessageBuilder::<IpAddr>::new().build())
            .execute()
            .try_collect()
            .await
    }

    async fn add_link(&self, link: LinkMessage) -> Result<(), Error> {
        self.link().add(link).execute().await
    }

    async fn set_link(&self, link: LinkMessage) -> Result<(), Error> {
        self.link().set(link).execute().await
    }

    async fn set_port(&self, port: LinkMessage) -> Result<(), Error> {
        self.link().set_port(port).execute().await
    }

    async fn add_address(&self, index: u32, net: IpNet, flags: AddressFlags) -> Result<(), Error> {
        let mut request = self.address().add(index, net.addr(), net.prefix_len());
        if !flags.is_empty() {
            request.message_mut().attributes.push(AddressAttribute::Flags(flags));
        }
        request.execute().await
    }

    async fn delete_address(&self, address: AddressMessage) -> Result<(), Error> {
        self.address().del(address).execute().await
    }

    async fn replace_host_route(&self, destination: Ipv4Addr, index: u32, source: Ipv4Addr) -> Result<(), Error> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination, 32)
            .output_interface(index)
            .pref_source(source)
            .scope(RouteScope::Link)
            .build();
        self.route().add(route).replace().execute().await
    }

    async fn replace_neighbour(&self, index: u32, ip: IpAddr, mac: MacAddr) -> Result<(), Error> {
        self.neighbours()
            .add(index, ip)
            .link_layer_address(&mac.0)
            .replace()
            .execute()
            .await
    }

    fn create_tap(&self, name: &str) -> Result<(), TapError> {
        tap_device::create_persistent_tap(name)
    }

    fn replace_tables(&self, tables: &[Table]) -> Result<(), ToolError> {
        vmlet_netfilter::replace_tables(tables)
    }

    fn replace_ingress_filters(&self, links: &[IngressFilters]) -> Result<(), ToolError> {
        vmlet_netfilter::replace_ingress_filters(links)
    }

    fn enable_ipv6_forwarding(&self) -> std::io::Result<bool> {
        if std::fs::read_to_string(IPV6_FORWARDING)?.trim() == "1" {
            return Ok(false);
        }
        std::fs::write(IPV6_FORWARDING, b"1").map(|()| true)
    }
}

/// Whether the kernel takes `name` as an interface name: at most 15 bytes (the 16th is the terminating NUL), no
/// `/`, `:` or white space, and not `.` or `..`.
pub fn is_valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name.contains(['/', ':', '\0'])
        && !name.contains(char::is_whitespace)
}

/// The kernel answers a query for a missing link with `ENODEV`.
fn absent_as_none(result: Result<Option<LinkMessage>, Error>) -> Result<Option<LinkMessage>, Error> {
    match result {
        Err(Error::NetlinkError(message)) if message.raw_code() == -libc::ENODEV => Ok(None),
        other => other,
    }
}

pub fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|attribute| match attribute {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

/// The link's hardware address, if it is an Ethernet one.
pub fn link_mac(link: &LinkMessage) -> Option<MacAddr> {
    link.attributes.iter().find_map(|attribute| match attribute {
        LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr),
        _ => None,
    })
}

pub fn link_mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|attribute| match attribute {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    })
}

/// The index of the bridge (or other controller) the link is a port of.
pub fn link_controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|attribute| match attribute {
        LinkAttribute::Controller(index) => Some(*index),
        _ => None,
    })
}

/// What kind of device the link is (`bridge`, `tun`, `veth`...).
pub fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link_infos(link).find_map(|info| match info {
        LinkInfo::Kind(kind) => Some(kind),
        _ => None,
    })
}

/// The link's `IFLA_LINKINFO` entries: its kind, and its data as a device and as a port.
pub fn link_infos(link: &LinkMessage) -> impl Iterator<Item = &LinkInfo> {
    link.attributes
        .iter()
        .filter_map(|attribute| match attribute {
            LinkAttribute::LinkInfo(infos) => Some(infos),
            _ => None,
        })
        .flatten()
}

/// Whether the link has IPv6 state in the kernel: not so when IPv6 is disabled on the node.
pub fn link_has_ipv6(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|attribute| match attribute {
        LinkAttribute::AfSpecUnspec(specs) => specs.iter().any(|spec| matches!(spec, AfSpecUnspec::Inet6(_))),
        _ => false,
    })
}

/// The address a message describes, with its prefix length. An IPv4 message names the local address in
/// `IFA_LOCAL` (`IFA_ADDRESS` is the peer on point-to-point links); an IPv6 one only has `IFA_ADDRESS`.
pub fn address_net(message: &AddressMessage) -> Option<IpNet> {
    let find = |local: bool| {
        message.attributes.iter().find_map(|attribute| match attribute {
            AddressAttribute::Local(ip) if local => Some(*ip),
            AddressAttribute::Address(ip) if !local => Some(*ip),
            _ => None,
        })
    };
    let ip: IpAddr = find(true).or_else(|| find(false))?;
    IpNet::new(ip, message.header.prefix_len).ok()
}

/// Whether the address is global (neither link-local nor host-only).
pub fn address_is_global(message: &AddressMessage) -> bool {
    message.header.scope == AddressScope::Universe
}
