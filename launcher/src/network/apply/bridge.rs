//! Applies the `bridge` binding's plumbing, which `managedTap` shares (see [`crate::network::binding::bridge`]):
//! the pod interface becomes a port of a new bridge next to the tap that QEMU opens, and a placeholder keeps the
//! pod's addresses in view.
//!
//! What the pod interface looked like is recorded in a state file before anything changes, so a launcher restarted
//! in the same pod carries on from the record: every step checks what is already there and makes only the changes
//! that are missing.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rtnetlink::Handle;
use tracing::info;
use vmlet_dhcp::MacAddr;

use super::{
    LinkNames, PodRecord, Recorded, attach_port, ensure_bridge, ensure_placeholder, ensure_tap, ethernet_address,
    failed_to, free_pod_interface, no_ipv6_addresses, serve_from, stop_learning,
};
pub(crate) use crate::network::binding::bridge::DEFAULT_SERVER_ADDRESS;
use crate::network::binding::bridge::{Guard, guard_table};
use crate::network::error::ApplyError;
use crate::network::pod_interface::PodInterface;
use crate::network::resolv_conf::DnsConfig;

/// How to hand one pod interface to the guest.
#[derive(Clone, Debug)]
pub(crate) struct BridgeBinding {
    /// The pod interface as the CNI named it, usually `eth0`.
    pub(crate) interface: String,
    /// The bridge's own IPv4 address, see [`DEFAULT_SERVER_ADDRESS`]; `None` under `managedTap`, where the launcher
    /// serves nothing and the bridge needs no address.
    pub(crate) server_address: Option<Ipv4Addr>,
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
    /// The pod interface's MAC address since it gave the guest its own.
    pub(crate) pod_port_mac: MacAddr,
    /// The pod interface's MTU, also the bridge's and the tap's.
    pub(crate) mtu: u32,
    /// The bridge's own address, for the DHCP server.
    pub(crate) server_address: Option<Ipv4Addr>,
    /// The pod interface as the CNI left it: the addresses, routes and gateways the guest takes over.
    pub(crate) pod: PodInterface,
    pub(crate) dns: DnsConfig,
}

impl BridgeBinding {
    /// The `bridge` binding of `interface` with the defaults of a pod: the server address
    /// [`DEFAULT_SERVER_ADDRESS`], DNS from `/etc/resolv.conf`, and the state file `network-<interface>.json` in
    /// `run_dir`.
    pub(crate) fn new(interface: &str, run_dir: &Path) -> BridgeBinding {
        BridgeBinding {
            interface: interface.to_owned(),
            server_address: Some(DEFAULT_SERVER_ADDRESS),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            state_file: run_dir.join(format!("network-{interface}.json")),
        }
    }

    /// The `managedTap` binding of `interface`: the same plumbing, no address on the bridge.
    pub(crate) fn managed(interface: &str, run_dir: &Path) -> BridgeBinding {
        BridgeBinding {
            server_address: None,
            ..BridgeBinding::new(interface, run_dir)
        }
    }

    fn record(&self) -> PodRecord<'_> {
        PodRecord {
            interface: &self.interface,
            resolv_conf: &self.resolv_conf,
            state_file: &self.state_file,
        }
    }

    /// Rewires the pod network for the guest, or finishes what an earlier launcher in this pod started. Running it
    /// again once it has succeeded changes nothing.
    pub(crate) async fn setup(&self, handle: &Handle) -> Result<BridgeSetup, ApplyError> {
        let names = LinkNames::for_interface(&self.interface)?;
        let Recorded { pod, dns, .. } = self
            .record()
            .load_or_record(handle, Some(&names.pod_port), || Ok(None))
            .await?;
        // First, so that nothing the pod's stack sends on the bridge ever reaches the pod network. The rules match
        // the port by name, so they hold from the moment the pod interface takes it.
        let guard = match self.server_address {
            Some(_) => Guard::KeepAddressingInPod,
            None => Guard::PodStackOnly,
        };
        vmlet_netfilter::replace_tables(&[guard_table(&names.pod_port, guard)]).map_err(ApplyError::Nft)?;

        let bridge = ensure_bridge(handle, &names.bridge, pod.mtu).await?;
        let bridge_index = bridge.header.index;
        match self.server_address {
            Some(server) => serve_from(handle, bridge_index, &names.bridge, IpAddr::V4(server)).await?,
            // Nothing to serve: the bridge has no business on either side, not even over IPv6, where it would
            // otherwise configure itself from the pod network's router advertisements.
            None => no_ipv6_addresses(handle, &bridge, &names.bridge).await?,
        }
        handle
            .link()
            .set(rtnetlink::LinkUnspec::new_with_index(bridge_index).up().build())
            .execute()
            .await
            .map_err(failed_to("bring the bridge up"))?;
        free_pod_interface(handle, &pod, &names).await?;
        attach_port(handle, pod.index, &names.pod_port, bridge_index, pod.mtu).await?;
        stop_learning(handle, pod.index).await?;
        let tap = ensure_tap(handle, &names.tap).await?;
        attach_port(handle, tap.header.index, &names.tap, bridge_index, pod.mtu).await?;
        ensure_placeholder(handle, &pod, &names.placeholder).await?;
        // Read once the ports are attached: a bridge takes the lowest of its ports' addresses.
        let bridge_mac = ethernet_address(handle, bridge_index, &names.bridge).await?;
        let pod_port_mac = ethernet_address(handle, pod.index, &names.pod_port).await?;

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
            pod_port_mac,
            mtu: pod.mtu,
            server_address: self.server_address,
            pod,
            dns,
        })
    }
}
