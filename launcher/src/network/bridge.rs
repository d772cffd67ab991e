//! The `bridge` binding: the guest takes the pod's IP and MAC addresses.
//!
//! The pod interface (a veth from the CNI) is renamed `<if>-nic`, loses its addresses and its MAC address, and
//! becomes a port of a new bridge `vb-<if>` next to the tap `tap-<if>` that QEMU opens. The guest's NIC gets the
//! pod interface's original MAC address, and the launcher's DHCP server, on the bridge's link-local address, gives
//! the guest the pod's addresses and routes. To the pod network the guest is the pod.
//!
//! What the pod interface looked like is recorded in a state file before anything changes, so a launcher restarted
//! in the same pod carries on from the record: every step checks what is already there and makes only the changes
//! that are missing.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{
    AfSpecInet, AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InetDevConf, InfoKind, LinkAttribute, LinkMessage,
};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec};
use serde::{Deserialize, Serialize};
use tracing::info;
use vmlet_dhcp::MacAddr;

use super::leak_guard::{self, LeakGuardError};
use super::netlink;
use super::pod_interface::{self, DiscoveryError, PodInterface};
use super::resolv_conf::{DnsConfig, ResolvConfError};
use super::tap::{self, TapError};

/// The bridge's address, the DHCP server's identifier and the source of its replies: link-local, so it is never
/// mistaken for an address of the pod network. The same as KubeVirt's.
pub(crate) const DEFAULT_SERVER_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 75, 10);

/// Why the pod network could not be handed to the guest.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BridgeError {
    #[error("interface name {0:?} leaves no room for the names derived from it (at most 11 bytes)")]
    InterfaceName(String),
    #[error("cannot discover the pod interface")]
    Discovery(#[from] DiscoveryError),
    #[error("cannot read the pod's DNS settings")]
    Dns(#[from] ResolvConfError),
    #[error("cannot access the network state file {path}")]
    StateFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the network state file {path} is not valid")]
    StateFileInvalid {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{pod_port:?} exists but {state_file} does not: the pod network was rewired and its record is lost")]
    RecordLost { pod_port: String, state_file: PathBuf },
    #[error("the recorded pod interface {name:?} (index {index}) no longer exists")]
    PodInterfaceGone { name: String, index: u32 },
    #[error("{name:?} exists and is not a {expected}")]
    UnexpectedLink { name: String, expected: &'static str },
    #[error("cannot {action}")]
    Netlink {
        action: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("cannot draw a MAC address for the pod interface")]
    RandomMac(#[source] io::Error),
    #[error("cannot create the tap")]
    Tap(#[from] TapError),
    #[error("cannot install the rules that keep DHCP inside the pod")]
    LeakGuard(#[from] LeakGuardError),
}

/// How to hand one pod interface to the guest.
#[derive(Clone, Debug)]
pub(crate) struct BridgeBinding {
    /// The pod interface as the CNI named it, usually `eth0`.
    pub(crate) interface: String,
    /// The bridge's own IPv4 address, see [`DEFAULT_SERVER_ADDRESS`].
    pub(crate) server_address: Ipv4Addr,
    /// The pod's resolver configuration, whose DNS settings go to the guest.
    pub(crate) resolv_conf: PathBuf,
    /// Where the pod interface's original configuration is recorded; it must outlive the launcher's container.
    pub(crate) state_file: PathBuf,
}

/// What the binding made, for the DHCP server and the domain definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BridgeSetup {
    pub(crate) bridge: String,
    pub(crate) bridge_index: u32,
    /// The bridge's own hardware address, the source of what the launcher serves the guest over IPv6.
    pub(crate) bridge_mac: MacAddr,
    pub(crate) tap: String,
    /// The pod interface's original MAC address, now the guest's.
    pub(crate) guest_mac: MacAddr,
    /// The pod interface's MTU, also the bridge's and the tap's.
    pub(crate) mtu: u32,
    /// The bridge's own address, for the DHCP server.
    pub(crate) server_address: Ipv4Addr,
    /// The pod interface as the CNI left it: the addresses, routes and gateways the guest takes over.
    pub(crate) pod: PodInterface,
    pub(crate) dns: DnsConfig,
}

/// What the state file holds: the pod's network before the binding changed it.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Recorded {
    pod: PodInterface,
    dns: DnsConfig,
}

/// The links the binding makes or renames, all named after the pod interface.
#[derive(Debug, PartialEq, Eq)]
struct LinkNames {
    /// The pod interface's new name, once it is a bridge port.
    pod_port: String,
    bridge: String,
    tap: String,
    /// The link that carries the pod's addresses under the pod interface's original name.
    placeholder: String,
}

impl LinkNames {
    fn for_interface(interface: &str) -> Result<LinkNames, BridgeError> {
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
            Err(BridgeError::InterfaceName(interface.to_owned()))
        }
    }
}

/// Turns an rtnetlink error into a [`BridgeError`] that says what was being done.
fn failed_to(action: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> BridgeError {
    let action = action.into();
    move |source| BridgeError::Netlink { action, source }
}

impl BridgeBinding {
    /// The binding of `interface` with the defaults of a pod: the server address [`DEFAULT_SERVER_ADDRESS`], DNS
    /// from `/etc/resolv.conf`, and the state file `network-<interface>.json` in `run_dir`.
    pub(crate) fn new(interface: &str, run_dir: &Path) -> BridgeBinding {
        BridgeBinding {
            interface: interface.to_owned(),
            server_address: DEFAULT_SERVER_ADDRESS,
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            state_file: run_dir.join(format!("network-{interface}.json")),
        }
    }

    /// Rewires the pod network for the guest, or finishes what an earlier launcher in this pod started. Running it
    /// again once it has succeeded changes nothing.
    pub(crate) async fn setup(&self, handle: &Handle) -> Result<BridgeSetup, BridgeError> {
        let names = LinkNames::for_interface(&self.interface)?;
        let Recorded { pod, dns } = self.recorded_network(handle, &names).await?;
        // First, so that nothing the pod's stack sends on the bridge ever reaches the pod network. The rules match
        // the port by name, so they hold from the moment the pod interface takes it.
        leak_guard::install(&names.pod_port).await?;

        let bridge = ensure_bridge(handle, &names.bridge, pod.mtu).await?;
        let bridge_index = bridge.header.index;
        self.configure_bridge(handle, &bridge).await?;
        free_pod_interface(handle, &pod, &names).await?;
        attach_port(handle, pod.index, &names.pod_port, bridge_index, pod.mtu).await?;
        stop_learning(handle, pod.index).await?;
        let tap = ensure_tap(handle, &names.tap).await?;
        attach_port(handle, tap.header.index, &names.tap, bridge_index, pod.mtu).await?;
        ensure_placeholder(handle, &pod, &names.placeholder).await?;
        // Read once the ports are attached: a bridge takes the lowest of its ports' addresses.
        let bridge_mac = netlink::link_by_index(handle, bridge_index)
            .await
            .map_err(failed_to("read the bridge's hardware address"))?
            .as_ref()
            .and_then(netlink::link_mac)
            .ok_or_else(|| BridgeError::UnexpectedLink {
                name: names.bridge.clone(),
                expected: "bridge with an Ethernet address",
            })?;

        info!(
            interface = %pod.name,
            bridge = %names.bridge,
            tap = %names.tap,
            guest_mac = %pod.mac,
            "pod network handed to the guest"
        );
        Ok(BridgeSetup {
            bridge: names.bridge,
            bridge_index,
            bridge_mac,
            tap: names.tap,
            guest_mac: pod.mac,
            mtu: pod.mtu,
            server_address: self.server_address,
            pod,
            dns,
        })
    }

    /// The pod's network as recorded by an earlier run, or as it is now, recorded before anything changes.
    async fn recorded_network(&self, handle: &Handle, names: &LinkNames) -> Result<Recorded, BridgeError> {
        if let Some(recorded) = self.read_state()? {
            info!(state_file = %self.state_file.display(), "carrying on from the recorded pod network");
            return Ok(recorded);
        }
        // Without a record, a renamed pod interface means the record was lost: what is now under the original name
        // is the placeholder, and describing it would hand the guest nothing.
        let pod_port = netlink::link_by_name(handle, &names.pod_port)
            .await
            .map_err(failed_to("look for the pod port"))?;
        if pod_port.is_some() {
            return Err(BridgeError::RecordLost {
                pod_port: names.pod_port.clone(),
                state_file: self.state_file.clone(),
            });
        }
        let recorded = Recorded {
            pod: pod_interface::discover(handle, &self.interface).await?,
            dns: DnsConfig::read(&self.resolv_conf)?,
        };
        self.write_state(&recorded)?;
        info!(state_file = %self.state_file.display(), "recorded the pod network");
        Ok(recorded)
    }

    fn read_state(&self) -> Result<Option<Recorded>, BridgeError> {
        let path = &self.state_file;
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(BridgeError::StateFile {
                    path: path.clone(),
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| BridgeError::StateFileInvalid {
                path: path.clone(),
                source,
            })
    }

    /// Writes the record to a temporary file renamed over the state file, so that a crash leaves either no record
    /// or a whole one.
    fn write_state(&self, recorded: &Recorded) -> Result<(), BridgeError> {
        let path = &self.state_file;
        let state_file_error = |source| BridgeError::StateFile {
            path: path.clone(),
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

    /// Gives the bridge its ARP settings and the server address, and brings it up.
    async fn configure_bridge(&self, handle: &Handle, bridge: &LinkMessage) -> Result<(), BridgeError> {
        let index = bridge.header.index;
        // The pod's addresses stay on the placeholder, and Linux by default answers ARP for any of its addresses on
        // any interface: the bridge would answer the node's and the guest's ARP requests for the guest's own address
        // (the guest's duplicate address detection would fail, the node would send the guest's traffic to the pod).
        // arp_ignore=1 answers only for addresses of the interface the request came in on; arp_announce=2 makes
        // the bridge's own requests name the server address, never the pod's. Set over netlink, since /proc/sys is
        // read-only in most containers. IPv6 needs nothing alike: neighbour solicitations are only answered for
        // addresses of the interface they arrive on.
        let mut arp = InetDevConf::default();
        arp.arp_ignore = 1;
        arp.arp_announce = 2;
        let message = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![
                AfSpecInet::DevConfRequest(arp),
            ])]))
            .build();
        handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(failed_to("set the bridge's ARP behaviour"))?;

        let server = IpNet::from(IpAddr::V4(self.server_address));
        ensure_addresses(handle, index, &[server], AddressFlags::empty())
            .await
            .map_err(failed_to("give the bridge its address"))?;
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(failed_to("bring the bridge up"))
    }
}

/// The bridge `name`, created with `mtu` if it does not exist.
async fn ensure_bridge(handle: &Handle, name: &str, mtu: u32) -> Result<LinkMessage, BridgeError> {
    ensure_link(handle, name, InfoKind::Bridge, "bridge", || {
        LinkBridge::new(name).mtu(mtu).build()
    })
    .await
}

/// The link `name` of kind `kind`, created from `create()` if it does not exist.
async fn ensure_link(
    handle: &Handle,
    name: &str,
    kind: InfoKind,
    kind_name: &'static str,
    create: impl FnOnce() -> LinkMessage,
) -> Result<LinkMessage, BridgeError> {
    let find = || async {
        netlink::link_by_name(handle, name)
            .await
            .map_err(failed_to(format!("look for {name}")))
    };
    let link = match find().await? {
        Some(link) => link,
        None => {
            handle
                .link()
                .add(create())
                .execute()
                .await
                .map_err(failed_to(format!("create {name}")))?;
            info!(link = name, kind = kind_name, "created");
            find().await?.ok_or_else(|| BridgeError::UnexpectedLink {
                name: name.to_owned(),
                expected: kind_name,
            })?
        }
    };
    if netlink::link_kind(&link) != Some(&kind) {
        return Err(BridgeError::UnexpectedLink {
            name: name.to_owned(),
            expected: kind_name,
        });
    }
    Ok(link)
}

/// Takes the pod's addresses off the pod interface, and renames it and changes its MAC address while it is down.
async fn free_pod_interface(handle: &Handle, pod: &PodInterface, names: &LinkNames) -> Result<(), BridgeError> {
    let link = netlink::link_by_index(handle, pod.index)
        .await
        .map_err(failed_to("look for the pod interface"))?
        .ok_or_else(|| BridgeError::PodInterfaceGone {
            name: pod.name.clone(),
            index: pod.index,
        })?;

    let addresses = netlink::addresses_of(handle, pod.index)
        .await
        .map_err(failed_to("list the pod interface's addresses"))?;
    for address in addresses.into_iter().filter(netlink::address_is_global) {
        let shown = netlink::address_net(&address)
            .map(|net| net.to_string())
            .unwrap_or_default();
        match handle.address().del(address).execute().await {
            Ok(()) => info!(address = %shown, "removed from the pod interface"),
            // Removing a primary IPv4 address removes the secondary ones of its subnet with it.
            Err(rtnetlink::Error::NetlinkError(message)) if message.raw_code() == -libc::EADDRNOTAVAIL => {}
            Err(source) => return Err(failed_to(format!("remove {shown} from the pod interface"))(source)),
        }
    }

    let renamed = netlink::link_name(&link) == Some(names.pod_port.as_str());
    // A bridge delivers frames for its ports' MAC addresses to itself: while the pod interface kept the guest's
    // address, the guest's traffic would never reach the tap.
    let mac_changed = netlink::link_mac(&link).is_some_and(|mac| mac != pod.mac);
    if renamed && mac_changed {
        return Ok(());
    }
    let link_set = |message, action: &str| {
        let request = handle.link().set(message).execute();
        let failed = failed_to(format!("{action} the pod interface"));
        async move { request.await.map_err(failed) }
    };
    // A link is renamed only while down. Down also drops its IPv6 addresses, link-local included.
    link_set(LinkUnspec::new_with_index(pod.index).down().build(), "take down").await?;
    let mut change = LinkUnspec::new_with_index(pod.index);
    if !renamed {
        change = change.name(names.pod_port.as_str());
    }
    if !mac_changed {
        let mac = pod_port_mac(random_bytes().map_err(BridgeError::RandomMac)?, pod.mac);
        change = change.address(mac.0.to_vec());
        info!(%mac, "pod interface gets a new MAC address");
    }
    link_set(change.build(), "rename and readdress").await
}

/// Makes the link `index` a port of the bridge with the pod's MTU, up, without IPv6 addresses of its own.
///
/// A port hands every frame it receives to the bridge, so its own IPv6 stack would only ever speak (duplicate
/// address detection, router solicitations from a MAC address the pod network never saw) and never listen; the
/// address generation mode `none`, set before it comes up, keeps it from making even a link-local address. That
/// is also why it needs no `accept_ra=0`: router advertisements reach the bridge, never the port.
async fn attach_port(handle: &Handle, index: u32, name: &str, bridge_index: u32, mtu: u32) -> Result<(), BridgeError> {
    let link = netlink::link_by_index(handle, index)
        .await
        .map_err(failed_to(format!("look for {name}")))?
        .ok_or_else(|| BridgeError::UnexpectedLink {
            name: name.to_owned(),
            expected: "link",
        })?;
    if netlink::link_has_ipv6(&link) {
        let no_addresses = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![
                AfSpecInet6::AddrGenMode(In6AddrGenMode::None),
            ])]))
            .build();
        handle
            .link()
            .set(no_addresses)
            .execute()
            .await
            .map_err(failed_to(format!("turn off IPv6 addresses on {name}")))?;
    }
    if netlink::link_controller(&link) != Some(bridge_index) {
        info!(port = name, "joins the bridge");
    }
    let port = LinkUnspec::new_with_index(index)
        .mtu(mtu)
        .controller(bridge_index)
        .up()
        .build();
    handle
        .link()
        .set(port)
        .execute()
        .await
        .map_err(failed_to(format!("attach {name} to the bridge")))
}

/// Keeps the bridge from learning MAC addresses behind the pod interface, as KubeVirt does: should a frame from the
/// guest ever come back through it (a node that reflects broadcasts), the bridge would otherwise take the guest to
/// be on the pod network and stop delivering its traffic to the tap. Not learning costs nothing here: with two
/// ports, a frame the bridge does not know where to send goes out of the only other port anyway.
async fn stop_learning(handle: &Handle, index: u32) -> Result<(), BridgeError> {
    handle
        .link()
        .set_port(LinkBridgePort::new(index).learning(false).build())
        .execute()
        .await
        .map_err(failed_to("stop the bridge learning addresses behind the pod interface"))
}

/// The tap `name`, created persistent if it does not exist.
async fn ensure_tap(handle: &Handle, name: &str) -> Result<LinkMessage, BridgeError> {
    let existing = netlink::link_by_name(handle, name)
        .await
        .map_err(failed_to(format!("look for {name}")))?;
    if existing.is_none() {
        tap::create_persistent_tap(name)?;
        info!(link = name, kind = "tap", "created");
    }
    let tap = netlink::link_by_name(handle, name)
        .await
        .map_err(failed_to(format!("look for {name}")))?;
    match tap {
        Some(tap) if netlink::link_kind(&tap) == Some(&InfoKind::Tun) => Ok(tap),
        _ => Err(BridgeError::UnexpectedLink {
            name: name.to_owned(),
            expected: "tap",
        }),
    }
}

/// Keeps the pod's addresses (and MTU) visible under the pod interface's original name, where the CNI and anyone
/// who looks at the pod expect them, on a link that leads nowhere (as KubeVirt does).
///
/// The link is a bridge without ports rather than KubeVirt's `dummy`: node kernels always have bridges, while
/// `dummy` is a module that may be missing. With no port it carries no frame. The addresses keep their prefix
/// length, as the CNI reported them, but get no prefix route (`noprefixroute`), so the pod's own stack does not
/// route the pod network into a link that goes nowhere; the bridge's ARP settings keep the pod from answering for
/// them.
async fn ensure_placeholder(handle: &Handle, pod: &PodInterface, name: &str) -> Result<(), BridgeError> {
    let placeholder = ensure_link(handle, name, InfoKind::Bridge, "bridge", || {
        LinkBridge::new(name).mtu(pod.mtu).build()
    })
    .await?;
    let index = placeholder.header.index;
    let addresses: Vec<IpNet> = pod
        .ipv4
        .iter()
        .map(|&net| IpNet::V4(net))
        .chain(pod.ipv6.iter().map(|&net| IpNet::V6(net)))
        .collect();
    // No duplicate address detection: the guest holds the same addresses on the pod network, by design.
    ensure_addresses(
        handle,
        index,
        &addresses,
        AddressFlags::Noprefixroute | AddressFlags::Nodad,
    )
    .await
    .map_err(failed_to("give the placeholder the pod's addresses"))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(failed_to("bring the placeholder up"))
}

/// Adds to the link `index` those of `addresses` it does not have yet.
async fn ensure_addresses(
    handle: &Handle,
    index: u32,
    addresses: &[IpNet],
    flags: AddressFlags,
) -> Result<(), rtnetlink::Error> {
    let present: Vec<IpNet> = netlink::addresses_of(handle, index)
        .await?
        .iter()
        .filter_map(netlink::address_net)
        .collect();
    for net in addresses.iter().filter(|net| !present.contains(net)) {
        let mut request = handle.address().add(index, net.addr(), net.prefix_len());
        if !flags.is_empty() {
            request.message_mut().attributes.push(AddressAttribute::Flags(flags));
        }
        request.execute().await?;
    }
    Ok(())
}

/// A MAC address for the pod interface once the guest has its original one: locally administered and unicast,
/// from `random` bytes, and never the guest's.
fn pod_port_mac(random: [u8; 6], guest: MacAddr) -> MacAddr {
    let mut mac = random;
    mac[0] = (mac[0] | 0x02) & !0x01;
    if MacAddr(mac) == guest {
        mac[5] ^= 0x01;
    }
    MacAddr(mac)
}

fn random_bytes() -> io::Result<[u8; 6]> {
    let mut bytes = [0; 6];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_are_named_after_the_pod_interface() {
        assert_eq!(
            LinkNames::for_interface("eth0").unwrap(),
            LinkNames {
                pod_port: "eth0-nic".to_owned(),
                bridge: "vb-eth0".to_owned(),
                tap: "tap-eth0".to_owned(),
                placeholder: "eth0".to_owned(),
            }
        );
        assert!(LinkNames::for_interface("net1-abcdefg").is_err());
        assert!(LinkNames::for_interface("net1-abcdef").is_ok());
        assert!(LinkNames::for_interface("").is_err());
    }

    #[test]
    fn pod_port_mac_is_local_unicast_and_never_the_guests() {
        let guest = MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x07]);
        assert_eq!(
            pod_port_mac([0xff, 1, 2, 3, 4, 5], guest),
            MacAddr([0xfe, 1, 2, 3, 4, 5])
        );
        assert_eq!(
            pod_port_mac([0x00, 1, 2, 3, 4, 5], guest),
            MacAddr([0x02, 1, 2, 3, 4, 5])
        );
        assert_eq!(
            pod_port_mac([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x07], guest),
            MacAddr([0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x06])
        );
    }

    #[test]
    fn state_file_round_trips_and_a_missing_one_is_no_record() {
        let dir = std::env::temp_dir().join(format!("vmlet-state-{}", std::process::id()));
        let binding = BridgeBinding::new("eth0", &dir.join("run"));
        assert_eq!(binding.read_state().unwrap(), None);
        let recorded = Recorded {
            pod: PodInterface {
                name: "eth0".to_owned(),
                index: 2,
                mac: MacAddr([2, 0, 0, 0, 0, 1]),
                mtu: 1400,
                ipv4: vec!["10.244.1.7/24".parse().unwrap()],
                ipv6: vec!["fd00::7/64".parse().unwrap()],
                ipv6_link_local: Some("fe80::1".parse().unwrap()),
                routes: vec![],
                gateway_v4: Some(Ipv4Addr::new(10, 244, 1, 1)),
                gateway_v6: None,
            },
            dns: DnsConfig::parse("nameserver 10.96.0.10\nsearch cluster.local\n"),
        };
        binding.write_state(&recorded).unwrap();
        assert_eq!(binding.read_state().unwrap(), Some(recorded));
        fs::write(&binding.state_file, b"{").unwrap();
        assert!(matches!(
            binding.read_state(),
            Err(BridgeError::StateFileInvalid { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
