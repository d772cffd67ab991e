//! Carries out a binding's plan ([`crate::network::binding::plan`]) in the pod's network namespace through
//! [`Netlink`]: every operation checks what is already there and makes only the changes that are missing, so a
//! launcher restarted in the same pod carries on where an earlier one stopped, and applying a plan twice changes
//! nothing the second time.
//!
//! What the pod interface looked like is recorded in a state file before anything changes, and read back by a
//! restarted launcher: the plan is always made from the pod as the CNI left it.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use ipnet::IpNet;
use rtnetlink::packet_route::address::AddressFlags;
use rtnetlink::packet_route::link::{
    AfSpecInet, AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InetDevConf, InfoKind, LinkAttribute, LinkMessage,
};
use rtnetlink::{LinkBridge, LinkBridgePort, LinkUnspec};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};
use vmlet_api::Binding;
use vmlet_dhcp::MacAddr;

use super::binding::BindingRequest;
use super::binding::bridge::guest_access_table;
use super::binding::masquerade::BRIDGE_MAC;
use super::binding::plan::{self, LinkMac, LinkNames, NetworkPlan, Operation};
use super::error::ApplyError;
use super::netlink::{self, IPV6_FORWARDING, Netlink};
use super::pod_interface::{self, PodInterface};
use super::resolv_conf::DnsConfig;

/// What applying a binding's plan made and found: with the request, all that the binding's plan of what the guest
/// is served needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wired {
    /// The link the launcher serves the guest on: the bridge, or the tap under `tap`.
    pub served_link: String,
    /// Its hardware address, the source of what the launcher serves the guest over IPv6.
    pub served_link_mac: MacAddr,
    /// Its IPv4 address, the DHCP server's; `None` under `managedTap`, where the launcher serves nothing.
    pub server_address: Option<Ipv4Addr>,
    /// The tap QEMU opens.
    pub tap: String,
    /// The guest NIC's MAC address: the spec's, else the pod interface's original one, or under `masquerade` one
    /// made up once and recorded.
    pub guest_mac: MacAddr,
    /// The pod interface's MAC address since it gave the guest its own; `None` under `masquerade`, which leaves
    /// the pod interface as it was.
    pub pod_port_mac: Option<MacAddr>,
    /// The MTU of every link the binding made, the pod interface's.
    pub mtu: u32,
    /// The pod interface as the CNI left it: the addresses, routes and gateways the guest takes over.
    pub pod: PodInterface,
    pub dns: DnsConfig,
}

/// Wires the guest NIC to the pod network as `request` says, or finishes what an earlier launcher in this pod
/// started: the pod as recorded, the plan made from it, the plan carried out.
pub async fn setup(request: &BindingRequest, handle: &impl Netlink) -> Result<Wired, ApplyError> {
    let names = LinkNames::for_interface(&request.interface)?;
    let recorded = record(request, handle, &names).await?;
    let plan = plan::plan(request, &recorded)?;
    apply(handle, &plan).await
}

/// The pod's network as recorded by an earlier run, or as it is now, recorded before anything changes. Under
/// `masquerade` the record keeps the guest's MAC address, the spec's or one made up once.
async fn record(request: &BindingRequest, handle: &impl Netlink, names: &LinkNames) -> Result<Recorded, ApplyError> {
    let state_file = request.state_file();
    let record = PodRecord::for_request(request, &state_file);
    if request.binding != Binding::Masquerade {
        return record.load_or_record(handle, Some(&names.pod_port), || Ok(None)).await;
    }
    let draw_mac = || -> Result<MacAddr, ApplyError> {
        let random = random_bytes().map_err(ApplyError::RandomMac)?;
        Ok(request.guest_mac.unwrap_or(local_mac(random, BRIDGE_MAC)))
    };
    let mut recorded = record.load_or_record(handle, None, || draw_mac().map(Some)).await?;
    if request.guest_mac.is_none() && recorded.guest_mac.is_none() {
        // A record from before the binding kept a MAC address: make one now, and keep it from now on.
        recorded.guest_mac = Some(draw_mac()?);
        record.write(&recorded)?;
    }
    Ok(recorded)
}

/// Carries out the plan's operations in order, then reads the hardware addresses the plan leaves to be read.
pub async fn apply(handle: &impl Netlink, plan: &NetworkPlan) -> Result<Wired, ApplyError> {
    for operation in &plan.operations {
        debug!(%operation, "applying");
        apply_operation(handle, operation).await?;
    }
    let served_link_mac = link_mac(handle, &plan.served_link_mac).await?;
    let pod_port_mac = match &plan.pod_port_mac {
        Some(mac) => Some(link_mac(handle, mac).await?),
        None => None,
    };
    info!(
        interface = %plan.pod.name,
        served_link = %plan.served_link,
        tap = %plan.tap,
        guest_mac = %plan.guest_mac,
        "pod network wired to the guest"
    );
    Ok(Wired {
        served_link: plan.served_link.clone(),
        served_link_mac,
        server_address: plan.server_address,
        tap: plan.tap.clone(),
        guest_mac: plan.guest_mac,
        pod_port_mac,
        mtu: plan.pod.mtu,
        pod: plan.pod.clone(),
        dns: plan.dns.clone(),
    })
}

async fn apply_operation(handle: &impl Netlink, operation: &Operation) -> Result<(), ApplyError> {
    match operation {
        Operation::LoadTables(tables) => handle.replace_tables(tables).map_err(ApplyError::Nft),
        Operation::LoadGuestAccessTable {
            bridge,
            tap,
            guest,
            server,
        } => {
            let bridge_mac = ethernet_address(handle, bridge).await?;
            handle
                .replace_tables(&[guest_access_table(tap, bridge_mac, *guest, *server)])
                .map_err(ApplyError::Nft)
        }
        Operation::LoadIngressFilters(filters) => handle.replace_ingress_filters(filters).map_err(ApplyError::Tc),
        Operation::EnsureBridge { name, mtu } => ensure_bridge(handle, name, *mtu).await.map(drop),
        Operation::EnsureTap { name } => ensure_tap(handle, name).await,
        Operation::FreePodInterface {
            name,
            index,
            mac,
            rename_to,
        } => free_pod_interface(handle, name, *index, *mac, rename_to).await,
        Operation::ServeFrom { link, address } => serve_from(handle, link, IpAddr::V4(*address)).await,
        Operation::NoIpv6Addresses { link } => {
            no_ipv6_addresses(handle, &existing_link(handle, link).await?, link).await
        }
        Operation::BringUp { link, mac, mtu } => bring_up(handle, link, *mac, *mtu).await,
        Operation::AttachPort { port, bridge, mtu } => attach_port(handle, port, bridge, *mtu).await,
        Operation::StopLearning { port } => stop_learning(handle, port).await,
        Operation::AddAddresses { link, addresses } => {
            let index = existing_link(handle, link).await?.header.index;
            ensure_addresses(handle, index, addresses, AddressFlags::Nodad)
                .await
                .map_err(failed_to(format!("give {link} its addresses")))
        }
        Operation::ForwardIpv4 { link, route_localnet } => {
            let index = existing_link(handle, link).await?.header.index;
            let what = if *route_localnet {
                format!("forwarding and route_localnet on {link}")
            } else {
                format!("forwarding on {link}")
            };
            set_ipv4_conf(handle, index, &what, |conf| {
                conf.forwarding = 1;
                if *route_localnet {
                    conf.route_localnet = 1;
                }
            })
            .await
        }
        Operation::ForwardIpv6 => {
            let failed = |source| ApplyError::Forwarding {
                path: IPV6_FORWARDING,
                source,
            };
            if handle.enable_ipv6_forwarding().map_err(failed)? {
                info!("IPv6 forwarding enabled in the pod");
            }
            Ok(())
        }
        Operation::EnsurePlaceholder { name, mtu, addresses } => {
            ensure_placeholder(handle, name, *mtu, addresses).await
        }
        Operation::HostRoute {
            destination,
            link,
            source,
        } => {
            let index = existing_link(handle, link).await?.header.index;
            handle
                .replace_host_route(*destination, index, *source)
                .await
                .map_err(failed_to(format!("route {destination} out of {link}")))
        }
        Operation::Neighbour { link, ip, mac } => {
            let index = existing_link(handle, link).await?.header.index;
            handle
                .replace_neighbour(index, *ip, *mac)
                .await
                .map_err(failed_to(format!("tell {link} where {ip} is")))
        }
    }
}

/// The hardware address the plan fixes, or the one the link has now.
async fn link_mac(handle: &impl Netlink, mac: &LinkMac) -> Result<MacAddr, ApplyError> {
    match mac {
        LinkMac::Fixed(mac) => Ok(*mac),
        LinkMac::ReadFrom(link) => ethernet_address(handle, link).await,
    }
}

/// Turns an rtnetlink error into a [`ApplyError`] that says what was being done.
pub(super) fn failed_to(action: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> ApplyError {
    let action = action.into();
    move |source| ApplyError::Netlink { action, source }
}

/// What the state file holds: the pod's network before the binding changed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    pub pod: PodInterface,
    pub dns: DnsConfig,
    /// The guest's MAC address when the binding made one up (masquerade), so a restart keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<MacAddr>,
}

/// Where a binding records the pod's network, and where it reads the pod's DNS settings from.
#[derive(Clone, Debug)]
pub(super) struct PodRecord<'a> {
    pub(super) interface: &'a str,
    pub(super) resolv_conf: &'a Path,
    pub(super) state_file: &'a Path,
}

impl PodRecord<'_> {
    /// Where `request` records the pod network, and where it reads the pod's DNS settings from.
    pub(super) fn for_request<'a>(request: &'a BindingRequest, state_file: &'a Path) -> PodRecord<'a> {
        PodRecord {
            interface: &request.interface,
            resolv_conf: &request.resolv_conf,
            state_file,
        }
    }

    /// The pod's network as recorded by an earlier run, or as it is now, recorded before anything changes.
    /// `renamed_port` is the pod interface's name once a binding has renamed it: finding it without a record means
    /// the record was lost, since what is now under the original name is the placeholder, and describing it would
    /// hand the guest nothing.
    pub(super) async fn load_or_record(
        &self,
        handle: &impl Netlink,
        renamed_port: Option<&str>,
        make_guest_mac: impl FnOnce() -> Result<Option<MacAddr>, ApplyError>,
    ) -> Result<Recorded, ApplyError> {
        if let Some(recorded) = self.read()? {
            info!(state_file = %self.state_file.display(), "carrying on from the recorded pod network");
            return Ok(recorded);
        }
        if let Some(pod_port) = renamed_port {
            let found = handle
                .link_by_name(pod_port)
                .await
                .map_err(failed_to("look for the pod port"))?;
            if found.is_some() {
                return Err(ApplyError::RecordLost {
                    pod_port: pod_port.to_owned(),
                    state_file: self.state_file.to_owned(),
                });
            }
        }
        let pod = pod_interface::discover(handle, self.interface).await?;
        let recorded = Recorded {
            pod,
            dns: DnsConfig::read(self.resolv_conf)?,
            guest_mac: make_guest_mac()?,
        };
        self.write(&recorded)?;
        info!(state_file = %self.state_file.display(), "recorded the pod network");
        Ok(recorded)
    }

    pub(super) fn read(&self) -> Result<Option<Recorded>, ApplyError> {
        read_record(self.state_file)
    }

    pub(super) fn write(&self, recorded: &Recorded) -> Result<(), ApplyError> {
        write_record(self.state_file, recorded)
    }
}

/// The record in `path`, if there is one.
pub(super) fn read_record(path: &Path) -> Result<Option<Recorded>, ApplyError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ApplyError::StateFile {
                path: path.to_owned(),
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| ApplyError::StateFileInvalid {
            path: path.to_owned(),
            source,
        })
}

/// Writes the record to a temporary file renamed over the state file `path`, so that a crash leaves either no
/// record or a whole one.
pub(super) fn write_record(path: &Path, recorded: &Recorded) -> Result<(), ApplyError> {
    let state_file_error = |source| ApplyError::StateFile {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(state_file_error)?;
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let write = || -> io::Result<()> {
        let mut file = File::create(&temporary)?;
        serde_json::to_writer_pretty(&mut file, recorded)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    };
    write().map_err(state_file_error)
}

/// Sets IPv4 settings of the link `index` over netlink, since /proc/sys is read-only in most containers.
async fn set_ipv4_conf(
    handle: &impl Netlink,
    index: u32,
    what: &str,
    change: impl FnOnce(&mut InetDevConf),
) -> Result<(), ApplyError> {
    let mut conf = InetDevConf::default();
    change(&mut conf);
    let message = LinkUnspec::new_with_index(index)
        .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
            AfSpecInet::DevConfRequest(conf),
        ])]))
        .build();
    handle.set_link(message).await.map_err(failed_to(format!("set {what}")))
}

/// Gives the link `name` the address `server`, for the DHCP server, and ARP settings that keep it from answering
/// for the pod's addresses.
///
/// The pod's addresses stay on the placeholder, and Linux by default answers ARP for any of its addresses on any
/// interface: the link would answer the node's and the guest's ARP requests for the guest's own address (the guest's
/// duplicate address detection would fail, the node would send the guest's traffic to the pod). arp_ignore=1
/// answers only for addresses of the interface the request came in on; arp_announce=2 makes the link's own requests
/// name the server address, never the pod's. IPv6 needs nothing alike: neighbour solicitations are only answered for
/// addresses of the interface they arrive on.
async fn serve_from(handle: &impl Netlink, name: &str, server: IpAddr) -> Result<(), ApplyError> {
    let index = existing_link(handle, name).await?.header.index;
    set_ipv4_conf(handle, index, &format!("the ARP behaviour of {name}"), |conf| {
        conf.arp_ignore = 1;
        conf.arp_announce = 2;
    })
    .await?;
    ensure_addresses(handle, index, &[IpNet::from(server)], AddressFlags::empty())
        .await
        .map_err(failed_to(format!("give {name} its address")))
}

/// A locally administered unicast MAC address from `random` bytes, never `avoid`.
pub(super) fn local_mac(random: [u8; 6], avoid: MacAddr) -> MacAddr {
    let mut mac = random;
    mac[0] = (mac[0] | 0x02) & !0x01;
    if MacAddr(mac) == avoid {
        mac[5] ^= 0x01;
    }
    MacAddr(mac)
}

/// The bridge `name`, created with `mtu` if it does not exist.
async fn ensure_bridge(handle: &impl Netlink, name: &str, mtu: u32) -> Result<LinkMessage, ApplyError> {
    ensure_link(handle, name, InfoKind::Bridge, "bridge", || {
        LinkBridge::new(name).mtu(mtu).build()
    })
    .await
}

/// The link `name` of kind `kind`, created from `create()` if it does not exist.
async fn ensure_link(
    handle: &impl Netlink,
    name: &str,
    kind: InfoKind,
    kind_name: &'static str,
    create: impl FnOnce() -> LinkMessage,
) -> Result<LinkMessage, ApplyError> {
    let find = || async {
        handle
            .link_by_name(name)
            .await
            .map_err(failed_to(format!("look for {name}")))
    };
    let link = match find().await? {
        Some(link) => link,
        None => {
            handle
                .add_link(create())
                .await
                .map_err(failed_to(format!("create {name}")))?;
            info!(link = name, kind = kind_name, "created");
            find().await?.ok_or_else(|| ApplyError::UnexpectedLink {
                name: name.to_owned(),
                expected: kind_name,
            })?
        }
    };
    if netlink::link_kind(&link) != Some(&kind) {
        return Err(ApplyError::UnexpectedLink {
            name: name.to_owned(),
            expected: kind_name,
        });
    }
    Ok(link)
}

/// Takes the pod's addresses off the pod interface `name`, the link `index`, and renames it `rename_to` and
/// changes its MAC address `mac` while it is down.
async fn free_pod_interface(
    handle: &impl Netlink,
    name: &str,
    index: u32,
    mac: MacAddr,
    rename_to: &str,
) -> Result<(), ApplyError> {
    let link = handle
        .link_by_index(index)
        .await
        .map_err(failed_to("look for the pod interface"))?
        .ok_or_else(|| ApplyError::PodInterfaceGone {
            name: name.to_owned(),
            index,
        })?;

    let addresses = handle
        .addresses_of(index)
        .await
        .map_err(failed_to("list the pod interface's addresses"))?;
    for address in addresses.into_iter().filter(netlink::address_is_global) {
        let shown = netlink::address_net(&address)
            .map(|net| net.to_string())
            .unwrap_or_default();
        match handle.delete_address(address).await {
            Ok(()) => info!(address = %shown, "removed from the pod interface"),
            // Removing a primary IPv4 address removes the secondary ones of its subnet with it.
            Err(rtnetlink::Error::NetlinkError(message)) if message.raw_code() == -libc::EADDRNOTAVAIL => {}
            Err(source) => return Err(failed_to(format!("remove {shown} from the pod interface"))(source)),
        }
    }

    let renamed = netlink::link_name(&link) == Some(rename_to);
    // A bridge delivers frames for its ports' MAC addresses to itself: while the pod interface kept the guest's
    // address, the guest's traffic would never reach the tap.
    let mac_changed = netlink::link_mac(&link).is_some_and(|current| current != mac);
    if renamed && mac_changed {
        return Ok(());
    }
    let link_set = |message, action: &str| {
        let request = handle.set_link(message);
        let failed = failed_to(format!("{action} the pod interface"));
        async move { request.await.map_err(failed) }
    };
    // A link is renamed only while down. Down also drops its IPv6 addresses, link-local included.
    link_set(LinkUnspec::new_with_index(index).down().build(), "take down").await?;
    let mut change = LinkUnspec::new_with_index(index);
    if !renamed {
        change = change.name(rename_to);
    }
    if !mac_changed {
        let new_mac = local_mac(random_bytes().map_err(ApplyError::RandomMac)?, mac);
        change = change.address(new_mac.0.to_vec());
        info!(mac = %new_mac, "pod interface gets a new MAC address");
    }
    link_set(change.build(), "rename and readdress").await
}

/// Turns off the link's IPv6 addresses, link-local included, before it comes up.
///
/// A link that hands every frame it receives to something else (a bridge, a tc redirect) would, with IPv6 of its
/// own, only ever speak (duplicate address detection, router solicitations from a MAC address the pod network never
/// saw) and never listen; the address generation mode `none`, set before it comes up, keeps it from making even a
/// link-local address. That is also why it needs no `accept_ra=0`: router advertisements never reach its stack.
async fn no_ipv6_addresses(handle: &impl Netlink, link: &LinkMessage, name: &str) -> Result<(), ApplyError> {
    if !netlink::link_has_ipv6(link) {
        return Ok(());
    }
    let no_addresses = LinkUnspec::new_with_index(link.header.index)
        .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![
            AfSpecInet6::AddrGenMode(In6AddrGenMode::None),
        ])]))
        .build();
    handle
        .set_link(no_addresses)
        .await
        .map_err(failed_to(format!("turn off IPv6 addresses on {name}")))
}

/// The link `name`, which must exist.
async fn existing_link(handle: &impl Netlink, name: &str) -> Result<LinkMessage, ApplyError> {
    handle
        .link_by_name(name)
        .await
        .map_err(failed_to(format!("look for {name}")))?
        .ok_or_else(|| ApplyError::UnexpectedLink {
            name: name.to_owned(),
            expected: "link",
        })
}

/// The Ethernet address of the link `name`, which must exist and have one.
async fn ethernet_address(handle: &impl Netlink, name: &str) -> Result<MacAddr, ApplyError> {
    netlink::link_mac(&existing_link(handle, name).await?).ok_or_else(|| ApplyError::UnexpectedLink {
        name: name.to_owned(),
        expected: "link with an Ethernet address",
    })
}

/// Makes the link `port` a port of `bridge` with `mtu`, up.
async fn attach_port(handle: &impl Netlink, port: &str, bridge: &str, mtu: u32) -> Result<(), ApplyError> {
    let link = existing_link(handle, port).await?;
    let bridge_index = existing_link(handle, bridge).await?.header.index;
    if netlink::link_controller(&link) != Some(bridge_index) {
        info!(port, "joins the bridge");
    }
    let change = LinkUnspec::new_with_index(link.header.index)
        .mtu(mtu)
        .controller(bridge_index)
        .up()
        .build();
    handle
        .set_link(change)
        .await
        .map_err(failed_to(format!("attach {port} to the bridge")))
}

/// Brings the link `name` up, with `mac` and `mtu` when given.
async fn bring_up(handle: &impl Netlink, name: &str, mac: Option<MacAddr>, mtu: Option<u32>) -> Result<(), ApplyError> {
    let mut change = LinkUnspec::new_with_index(existing_link(handle, name).await?.header.index);
    if let Some(mac) = mac {
        change = change.address(mac.0.to_vec());
    }
    if let Some(mtu) = mtu {
        change = change.mtu(mtu);
    }
    handle
        .set_link(change.up().build())
        .await
        .map_err(failed_to(format!("bring {name} up")))
}

/// Keeps the bridge from learning MAC addresses behind the pod interface, as KubeVirt does: should a frame from the
/// guest ever come back through it (a node that reflects broadcasts), the bridge would otherwise take the guest to
/// be on the pod network and stop delivering its traffic to the tap. Not learning costs nothing here: with two
/// ports, a frame the bridge does not know where to send goes out of the only other port anyway.
async fn stop_learning(handle: &impl Netlink, port: &str) -> Result<(), ApplyError> {
    let index = existing_link(handle, port).await?.header.index;
    handle
        .set_port(LinkBridgePort::new(index).learning(false).build())
        .await
        .map_err(failed_to(format!("stop the bridge learning addresses behind {port}")))
}

/// The tap `name`, created persistent if it does not exist.
async fn ensure_tap(handle: &impl Netlink, name: &str) -> Result<(), ApplyError> {
    let existing = handle
        .link_by_name(name)
        .await
        .map_err(failed_to(format!("look for {name}")))?;
    if existing.is_none() {
        handle.create_tap(name)?;
        info!(link = name, kind = "tap", "created");
    }
    let tap = handle
        .link_by_name(name)
        .await
        .map_err(failed_to(format!("look for {name}")))?;
    match tap {
        Some(tap) if netlink::link_kind(&tap) == Some(&InfoKind::Tun) => Ok(()),
        _ => Err(ApplyError::UnexpectedLink {
            name: name.to_owned(),
            expected: "tap",
        }),
    }
}

/// Keeps the pod's `addresses` (and `mtu`) visible under the pod interface's original `name`, where the CNI and
/// anyone who looks at the pod expect them, on a link that leads nowhere (as KubeVirt does).
///
/// The link is a bridge without ports rather than KubeVirt's `dummy`: node kernels always have bridges, while
/// `dummy` is a module that may be missing. With no port it carries no frame. The addresses keep their prefix
/// length, as the CNI reported them, but get no prefix route (`noprefixroute`), so the pod's own stack does not
/// route the pod network into a link that goes nowhere; the bridge's ARP settings keep the pod from answering for
/// them.
async fn ensure_placeholder(
    handle: &impl Netlink,
    name: &str,
    mtu: u32,
    addresses: &[IpNet],
) -> Result<(), ApplyError> {
    let index = ensure_bridge(handle, name, mtu).await?.header.index;
    // No duplicate address detection: the guest holds the same addresses on the pod network, by design.
    ensure_addresses(
        handle,
        index,
        addresses,
        AddressFlags::Noprefixroute | AddressFlags::Nodad,
    )
    .await
    .map_err(failed_to("give the placeholder the pod's addresses"))?;
    handle
        .set_link(LinkUnspec::new_with_index(index).up().build())
        .await
        .map_err(failed_to("bring the placeholder up"))
}

/// Adds to the link `index` those of `addresses` it does not have yet.
async fn ensure_addresses(
    handle: &impl Netlink,
    index: u32,
    addresses: &[IpNet],
    flags: AddressFlags,
) -> Result<(), rtnetlink::Error> {
    let present: Vec<IpNet> = handle
        .addresses_of(index)
        .await?
        .iter()
        .filter_map(netlink::address_net)
        .collect();
    for net in addresses.iter().filter(|net| !present.contains(net)) {
        handle.add_address(index, *net, flags).await?;
    }
    Ok(())
}

fn random_bytes() -> io::Result<[u8; 6]> {
    let mut bytes = [0; 6];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests;
