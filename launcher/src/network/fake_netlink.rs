//! A [`Netlink`] that keeps a pod's links, addresses, routes, tables and filters in memory and records each request
//! that changed them, so that the bindings' steps are tested without root.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::mem::discriminant;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use rtnetlink::Error;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::{AfSpecUnspec, InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::RouteMessage;
use vmlet_dhcp::MacAddr;
use vmlet_netfilter::{IngressFilters, Table, ToolError};

use super::netlink::{self, Netlink};
use super::tap_device::TapError;

/// What the fake holds: everything a binding can change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodStack {
    pub links: Vec<LinkMessage>,
    pub addresses: Vec<AddressMessage>,
    pub routes: Vec<RouteMessage>,
    /// Bridge port settings by link index, as last set.
    pub ports: BTreeMap<u32, LinkMessage>,
    /// Tables by family and name.
    pub tables: BTreeMap<String, Table>,
    /// Ingress filters by link.
    pub filters: BTreeMap<String, IngressFilters>,
    pub ipv6_forwarding: bool,
    /// Host routes the binding made: destination to link index and source.
    pub host_routes: BTreeMap<Ipv4Addr, (u32, Ipv4Addr)>,
    /// Permanent neighbour entries: address to link index and hardware address.
    pub neighbours: BTreeMap<IpAddr, (u32, MacAddr)>,
}

#[derive(Default)]
pub struct FakeNetlink {
    pub stack: RefCell<PodStack>,
    changes: RefCell<Vec<String>>,
}

impl FakeNetlink {
    pub fn new(stack: PodStack) -> FakeNetlink {
        FakeNetlink {
            stack: RefCell::new(stack),
            changes: RefCell::default(),
        }
    }

    /// The requests that changed something since the last call, in order.
    pub fn take_changes(&self) -> Vec<String> {
        std::mem::take(&mut self.changes.borrow_mut())
    }

    fn record(&self, change: String) {
        self.changes.borrow_mut().push(change);
    }

    fn name_of(&self, index: u32) -> String {
        let stack = self.stack.borrow();
        let link = stack.links.iter().find(|link| link.header.index == index);
        link.and_then(netlink::link_name).unwrap_or("?").to_owned()
    }

    /// A new link, with what the kernel gives every link: an index, an Ethernet address, IPv6 state.
    fn add(&self, mut link: LinkMessage) -> String {
        let mut stack = self.stack.borrow_mut();
        let index = stack.links.iter().map(|link| link.header.index).max().unwrap_or(0) + 1;
        link.header.index = index;
        if netlink::link_mac(&link).is_none() {
            link.attributes
                .push(LinkAttribute::Address(vec![0x02, 0xfa, 0x4e, 0, 0, index as u8]));
        }
        link.attributes
            .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(Vec::new())]));
        let name = netlink::link_name(&link).unwrap_or("?").to_owned();
        stack.links.push(link);
        name
    }
}

/// `change`'s attributes replace those of the same kind in `link`, and its flags those its change mask names.
fn merge(link: &mut LinkMessage, change: &LinkMessage) {
    let mask = change.header.change_mask;
    link.header.flags = (link.header.flags & !mask) | (change.header.flags & mask);
    for attribute in &change.attributes {
        match link
            .attributes
            .iter_mut()
            .find(|a| discriminant(*a) == discriminant(attribute))
        {
            Some(existing) => *existing = attribute.clone(),
            None => link.attributes.push(attribute.clone()),
        }
    }
}

impl Netlink for FakeNetlink {
    async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>, Error> {
        let stack = self.stack.borrow();
        Ok(stack
            .links
            .iter()
            .find(|link| netlink::link_name(link) == Some(name))
            .cloned())
    }

    async fn link_by_index(&self, index: u32) -> Result<Option<LinkMessage>, Error> {
        let stack = self.stack.borrow();
        Ok(stack.links.iter().find(|link| link.header.index == index).cloned())
    }

    async fn addresses_of(&self, index: u32) -> Result<Vec<AddressMessage>, Error> {
        let stack = self.stack.borrow();
        Ok(stack
            .addresses
            .iter()
            .filter(|a| a.header.index == index)
            .cloned()
            .collect())
    }

    async fn routes(&self) -> Result<Vec<RouteMessage>, Error> {
        Ok(self.stack.borrow().routes.clone())
    }

    async fn add_link(&self, link: LinkMessage) -> Result<(), Error> {
        let name = self.add(link);
        self.record(format!("add link {name}"));
        Ok(())
    }

    async fn set_link(&self, change: LinkMessage) -> Result<(), Error> {
        let index = change.header.index;
        let changed = {
            let mut stack = self.stack.borrow_mut();
            let link = stack
                .links
                .iter_mut()
                .find(|link| link.header.index == index)
                .expect("a binding only changes links that exist");
            let before = link.clone();
            merge(link, &change);
            *link != before
        };
        if changed {
            self.record(format!("set link {}", self.name_of(index)));
        }
        Ok(())
    }

    async fn set_port(&self, port: LinkMessage) -> Result<(), Error> {
        let index = port.header.index;
        let before = self.stack.borrow_mut().ports.insert(index, port.clone());
        if before.as_ref() != Some(&port) {
            self.record(format!("set port {}", self.name_of(index)));
        }
        Ok(())
    }

    async fn add_address(&self, index: u32, net: IpNet, flags: AddressFlags) -> Result<(), Error> {
        let mut address = AddressMessage::default();
        address.header.index = index;
        address.header.prefix_len = net.prefix_len();
        let link_local = matches!(net.addr(), IpAddr::V6(ip) if ip.is_unicast_link_local());
        address.header.scope = if link_local {
            AddressScope::Link
        } else {
            AddressScope::Universe
        };
        address.header.family = match net {
            IpNet::V4(_) => AddressFamily::Inet,
            IpNet::V6(_) => AddressFamily::Inet6,
        };
        address.attributes.push(AddressAttribute::Address(net.addr()));
        if net.addr().is_ipv4() {
            address.attributes.push(AddressAttribute::Local(net.addr()));
        }
        address.attributes.push(AddressAttribute::Flags(flags));
        self.stack.borrow_mut().addresses.push(address);
        self.record(format!("add address {net} to {}", self.name_of(index)));
        Ok(())
    }

    async fn delete_address(&self, address: AddressMessage) -> Result<(), Error> {
        let net = netlink::address_net(&address);
        let index = address.header.index;
        self.stack
            .borrow_mut()
            .addresses
            .retain(|a| !(a.header.index == index && netlink::address_net(a) == net));
        self.record(format!(
            "delete address {} from {}",
            net.map(|n| n.to_string()).unwrap_or_default(),
            self.name_of(index)
        ));
        Ok(())
    }

    async fn replace_host_route(&self, destination: Ipv4Addr, index: u32, source: Ipv4Addr) -> Result<(), Error> {
        let before = self.stack.borrow_mut().host_routes.insert(destination, (index, source));
        if before != Some((index, source)) {
            self.record(format!(
                "route {destination}/32 dev {} src {source}",
                self.name_of(index)
            ));
        }
        Ok(())
    }

    async fn replace_neighbour(&self, index: u32, ip: IpAddr, mac: MacAddr) -> Result<(), Error> {
        let before = self.stack.borrow_mut().neighbours.insert(ip, (index, mac));
        if before != Some((index, mac)) {
            self.record(format!("neighbour {ip} lladdr {mac} dev {}", self.name_of(index)));
        }
        Ok(())
    }

    fn create_tap(&self, name: &str) -> Result<(), TapError> {
        let mut tap = LinkMessage::default();
        tap.attributes.push(LinkAttribute::IfName(name.to_owned()));
        tap.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Tun)]));
        self.add(tap);
        self.record(format!("create tap {name}"));
        Ok(())
    }

    fn replace_tables(&self, tables: &[Table]) -> Result<(), ToolError> {
        for table in tables {
            let key = format!("{:?} {}", table.family, table.name);
            let before = self.stack.borrow_mut().tables.insert(key.clone(), table.clone());
            if before.as_ref() != Some(table) {
                self.record(format!("replace table {key}"));
            }
        }
        Ok(())
    }

    fn replace_ingress_filters(&self, links: &[IngressFilters]) -> Result<(), ToolError> {
        for filters in links {
            let before = self
                .stack
                .borrow_mut()
                .filters
                .insert(filters.link.clone(), filters.clone());
            if before.as_ref() != Some(filters) {
                self.record(format!("replace the ingress filters of {}", filters.link));
            }
        }
        Ok(())
    }

    fn enable_ipv6_forwarding(&self) -> std::io::Result<bool> {
        let was = std::mem::replace(&mut self.stack.borrow_mut().ipv6_forwarding, true);
        if !was {
            self.record("enable IPv6 forwarding".to_owned());
        }
        Ok(!was)
    }
}
