//! What a binding does to the pod's network namespace, worked out purely from the request and the pod as recorded:
//! the operations in order, each a change that the applier ([`crate::network::apply`]) makes only where it is
//! missing, and what the guest is then served from.
//!
//! Operations name links; the applier looks up their indices when it comes to them, since most links do not exist
//! before the operations that make them. The one exception is the pod interface while it is freed, known by the
//! index the record keeps, whatever its name is by then.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use vmlet_api::Binding;
use vmlet_dhcp::MacAddr;
use vmlet_netfilter::{IngressFilters, Table};

use super::{BindingRequest, bridge, managed_tap, masquerade, pod_networks, tap};
use crate::network::apply::Recorded;
use crate::network::error::PlanError;
use crate::network::netlink;
use crate::network::pod_interface::PodInterface;
use crate::network::resolv_conf::DnsConfig;

/// The operations of a binding, in order, and what the guest is served from once they are done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkPlan {
    pub operations: Vec<Operation>,
    /// The link the launcher serves the guest on: the bridge, or the tap under `tap`.
    pub served_link: String,
    /// Its hardware address, the source of what the launcher serves the guest over IPv6.
    pub served_link_mac: LinkMac,
    /// The served link's IPv4 address, the DHCP server's; `None` under `managedTap`, where the launcher serves
    /// nothing.
    pub server_address: Option<Ipv4Addr>,
    /// The tap QEMU opens.
    pub tap: String,
    pub guest_mac: MacAddr,
    /// The pod interface's hardware address once it gave the guest its own; `None` under `masquerade`, which
    /// leaves the pod interface as it was.
    pub pod_port_mac: Option<LinkMac>,
    pub pod: PodInterface,
    pub dns: DnsConfig,
}

/// A hardware address the plan fixes, or one the applier reads from a link once every operation is done: a
/// bridge without an address of its own takes the lowest of its ports', and the pod interface's new one is drawn
/// at random.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkMac {
    Fixed(MacAddr),
    ReadFrom(String),
}

/// One change to the pod's network namespace. Each is made only where it is missing, so a plan applied twice
/// changes nothing the second time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Loads nftables tables, each replacing its earlier copy at once.
    LoadTables(Vec<Table>),
    /// Loads [`bridge::guest_access_table`], which needs the bridge's hardware address as it is once the bridge's
    /// ports are attached.
    LoadGuestAccessTable {
        bridge: String,
        tap: String,
        guest: Ipv4Addr,
        server: Ipv4Addr,
    },
    /// Replaces the tc ingress filters of links.
    LoadIngressFilters(Vec<IngressFilters>),
    /// The bridge, made with the MTU if missing.
    EnsureBridge { name: String, mtu: u32 },
    /// The persistent tap QEMU opens, made if missing.
    EnsureTap { name: String },
    /// Takes the pod's global addresses off the pod interface, recorded as `name`, the link `index`, with `mac`,
    /// and renames it `rename_to` with a random MAC address, never `mac`: the guest takes over the pod's addresses
    /// and MAC address.
    FreePodInterface {
        name: String,
        index: u32,
        mac: MacAddr,
        rename_to: String,
    },
    /// Gives the link the address the launcher's DHCP server answers from, with ARP settings that keep the link
    /// from answering for the pod's addresses.
    ServeFrom { link: String, address: Ipv4Addr },
    /// Turns off the link's IPv6 addresses, link-local included: a link that hands on every frame it gets would
    /// only ever speak.
    NoIpv6Addresses { link: String },
    /// Brings the link up, with the MAC address and MTU when given.
    BringUp {
        link: String,
        mac: Option<MacAddr>,
        mtu: Option<u32>,
    },
    /// Makes the link a port of the bridge, up, with the MTU.
    AttachPort { port: String, bridge: String, mtu: u32 },
    /// Keeps the bridge from learning MAC addresses behind the port.
    StopLearning { port: String },
    /// Adds to the link those of the addresses it lacks, without duplicate address detection: the link is the
    /// launcher's own, and the addresses are needed at once.
    AddAddresses { link: String, addresses: Vec<IpNet> },
    /// Turns on IPv4 forwarding on the link, and `route_localnet` when asked, over netlink.
    ForwardIpv4 { link: String, route_localnet: bool },
    /// Turns on IPv6 forwarding in the namespace, a sysctl: IPv6 has no per-link netlink setting.
    ForwardIpv6,
    /// Keeps the pod's addresses, with the MTU, under the pod interface's original name, on a port-less bridge.
    EnsurePlaceholder {
        name: String,
        mtu: u32,
        addresses: Vec<IpNet>,
    },
    /// Routes `destination` (a /32) out of the link from `source`, in place of any route to it.
    HostRoute {
        destination: Ipv4Addr,
        link: String,
        source: Ipv4Addr,
    },
    /// Says, permanently, that `ip` is at `mac` on the link.
    Neighbour { link: String, ip: IpAddr, mac: MacAddr },
}

/// The links a binding makes or renames, all named after the pod interface.
#[derive(Debug, PartialEq, Eq)]
pub struct LinkNames {
    /// The pod interface's new name, once it no longer carries the pod's identity.
    pub pod_port: String,
    pub bridge: String,
    pub tap: String,
    /// The link that carries the pod's addresses under the pod interface's original name.
    pub placeholder: String,
}

impl LinkNames {
    pub fn for_interface(interface: &str) -> Result<LinkNames, PlanError> {
        let names = LinkNames {
            pod_port: format!("{interface}-nic"),
            bridge: format!("vb-{interface}"),
            tap: format!("tap-{interface}"),
            placeholder: interface.to_owned(),
        };
        let all = [&names.pod_port, &names.bridge, &names.tap, &names.placeholder];
        if all.iter().all(|name| netlink::is_valid_interface_name(name)) {
            Ok(names)
        } else {
            Err(PlanError::InterfaceName(interface.to_owned()))
        }
    }
}

/// What `request`'s binding does to the pod as `recorded`, and what the guest is then served from.
pub fn plan(request: &BindingRequest, recorded: &Recorded) -> Result<NetworkPlan, PlanError> {
    let names = LinkNames::for_interface(&request.interface)?;
    match request.binding {
        Binding::Bridge => Ok(bridge::plan(
            request,
            recorded,
            &names,
            Some(bridge::DEFAULT_SERVER_ADDRESS),
        )),
        Binding::ManagedTap => Ok(managed_tap::plan(request, recorded, &names)),
        Binding::Tap => Ok(tap::plan(request, recorded, &names)),
        Binding::Masquerade => masquerade::plan(request, recorded, &names),
    }
}

/// The plan of a binding that hands the pod's identity to the guest (`bridge`, `managedTap`, `tap`), from its
/// `operations` so far: the placeholder then keeps the pod's addresses in view, and both hardware addresses are read
/// once every port is attached.
pub(super) fn identity_plan(
    request: &BindingRequest,
    recorded: &Recorded,
    names: &LinkNames,
    mut operations: Vec<Operation>,
    served_link: &str,
    server_address: Option<Ipv4Addr>,
) -> NetworkPlan {
    let pod = &recorded.pod;
    operations.push(Operation::EnsurePlaceholder {
        name: names.placeholder.clone(),
        mtu: pod.mtu,
        addresses: pod_networks(pod),
    });
    NetworkPlan {
        operations,
        served_link: served_link.to_owned(),
        served_link_mac: LinkMac::ReadFrom(served_link.to_owned()),
        server_address,
        tap: names.tap.clone(),
        guest_mac: request.guest_mac.unwrap_or(pod.mac),
        pod_port_mac: Some(LinkMac::ReadFrom(names.pod_port.clone())),
        pod: pod.clone(),
        dns: recorded.dns.clone(),
    }
}

/// One line per operation, as the tests list them and the applier logs them.
impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |items: &mut dyn Iterator<Item = String>| items.collect::<Vec<_>>().join(", ");
        match self {
            Operation::LoadTables(tables) => {
                let names = list(&mut tables.iter().map(|t| format!("{:?} {}", t.family, t.name)));
                write!(f, "load table {names}")
            }
            Operation::LoadGuestAccessTable {
                bridge,
                tap,
                guest,
                server,
            } => write!(
                f,
                "load table Bridge vmlet-guest-access: {guest} from {tap} to {server} on {bridge}"
            ),
            Operation::LoadIngressFilters(filters) => {
                let links = list(&mut filters.iter().map(|filters| filters.link.clone()));
                write!(f, "load the ingress filters of {links}")
            }
            Operation::EnsureBridge { name, mtu } => write!(f, "ensure bridge {name} mtu {mtu}"),
            Operation::EnsureTap { name } => write!(f, "ensure tap {name}"),
            Operation::FreePodInterface {
                name, index, rename_to, ..
            } => write!(
                f,
                "free the pod interface {name} ({index}) as {rename_to} with a new MAC"
            ),
            Operation::ServeFrom { link, address } => write!(f, "serve from {address} on {link}"),
            Operation::NoIpv6Addresses { link } => write!(f, "no IPv6 addresses on {link}"),
            Operation::BringUp { link, mac, mtu } => {
                write!(f, "bring {link} up")?;
                if let Some(mac) = mac {
                    write!(f, " mac {mac}")?;
                }
                if let Some(mtu) = mtu {
                    write!(f, " mtu {mtu}")?;
                }
                Ok(())
            }
            Operation::AttachPort { port, bridge, mtu } => write!(f, "attach {port} to {bridge} mtu {mtu}"),
            Operation::StopLearning { port } => write!(f, "stop learning behind {port}"),
            Operation::AddAddresses { link, addresses } => {
                let addresses = list(&mut addresses.iter().map(IpNet::to_string));
                write!(f, "address {link} with {addresses}")
            }
            Operation::ForwardIpv4 { link, route_localnet } => {
                write!(f, "forward IPv4 on {link}")?;
                if *route_localnet {
                    write!(f, " with route_localnet")?;
                }
                Ok(())
            }
            Operation::ForwardIpv6 => write!(f, "forward IPv6"),
            Operation::EnsurePlaceholder { name, mtu, addresses } => {
                let addresses = list(&mut addresses.iter().map(IpNet::to_string));
                write!(f, "ensure placeholder {name} mtu {mtu} with {addresses}")
            }
            Operation::HostRoute {
                destination,
                link,
                source,
            } => write!(f, "route {destination}/32 dev {link} src {source}"),
            Operation::Neighbour { link, ip, mac } => write!(f, "neighbour {ip} lladdr {mac} dev {link}"),
        }
    }
}
