//! Small queries over rtnetlink and readers for the attributes of its messages.

use std::net::IpAddr;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::{AfSpecUnspec, InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::{Error, Handle};
use vmlet_dhcp::MacAddr;

/// The link named `name`, if there is one.
pub(crate) async fn link_by_name(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, Error> {
    absent_as_none(handle.link().get().match_name(name).execute().try_next().await)
}

/// The link with index `index`, if there is one.
pub(crate) async fn link_by_index(handle: &Handle, index: u32) -> Result<Option<LinkMessage>, Error> {
    absent_as_none(handle.link().get().match_index(index).execute().try_next().await)
}

/// The addresses of the link `index`, of every family and scope.
pub(crate) async fn addresses_of(handle: &Handle, index: u32) -> Result<Vec<AddressMessage>, Error> {
    handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
}

/// Whether the kernel takes `name` as an interface name: at most 15 bytes (the 16th is the terminating NUL), no
/// `/`, `:` or white space, and not `.` or `..`.
pub(crate) fn is_valid_interface_name(name: &str) -> bool {
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

pub(crate) fn link_name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|attribute| match attribute {
        LinkAttribute::IfName(name) => Some(name.as_str()),
        _ => None,
    })
}

/// The link's hardware address, if it is an Ethernet one.
pub(crate) fn link_mac(link: &LinkMessage) -> Option<MacAddr> {
    link.attributes.iter().find_map(|attribute| match attribute {
        LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr),
        _ => None,
    })
}

pub(crate) fn link_mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|attribute| match attribute {
        LinkAttribute::Mtu(mtu) => Some(*mtu),
        _ => None,
    })
}

/// The index of the bridge (or other controller) the link is a port of.
pub(crate) fn link_controller(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|attribute| match attribute {
        LinkAttribute::Controller(index) => Some(*index),
        _ => None,
    })
}

/// What kind of device the link is (`bridge`, `tun`, `veth`...).
pub(crate) fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link_infos(link).find_map(|info| match info {
        LinkInfo::Kind(kind) => Some(kind),
        _ => None,
    })
}

/// The link's `IFLA_LINKINFO` entries: its kind, and its data as a device and as a port.
pub(crate) fn link_infos(link: &LinkMessage) -> impl Iterator<Item = &LinkInfo> {
    link.attributes
        .iter()
        .filter_map(|attribute| match attribute {
            LinkAttribute::LinkInfo(infos) => Some(infos),
            _ => None,
        })
        .flatten()
}

#[cfg(test)]
pub(crate) fn link_is_up(link: &LinkMessage) -> bool {
    link.header.flags.contains(rtnetlink::packet_route::link::LinkFlags::Up)
}

/// Whether the link has IPv6 state in the kernel: not so when IPv6 is disabled on the node.
pub(crate) fn link_has_ipv6(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|attribute| match attribute {
        LinkAttribute::AfSpecUnspec(specs) => specs.iter().any(|spec| matches!(spec, AfSpecUnspec::Inet6(_))),
        _ => false,
    })
}

/// The address a message describes, with its prefix length. An IPv4 message names the local address in
/// `IFA_LOCAL` (`IFA_ADDRESS` is the peer on point-to-point links); an IPv6 one only has `IFA_ADDRESS`.
pub(crate) fn address_net(message: &AddressMessage) -> Option<IpNet> {
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
pub(crate) fn address_is_global(message: &AddressMessage) -> bool {
    message.header.scope == AddressScope::Universe
}
