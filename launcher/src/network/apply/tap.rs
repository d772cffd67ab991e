//! Applies the `tap` binding's plan: the pod interface freed of the pod's identity, the tap, the tc redirects between
//! them and the nftables table (see [`crate::network::binding::tap`]).

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rtnetlink::Handle;
use tracing::info;
use vmlet_dhcp::MacAddr;

use super::bridge::DEFAULT_SERVER_ADDRESS;
use super::{
    LinkNames, PodRecord, Recorded, bring_up_silent, ensure_placeholder, ensure_tap, ethernet_address,
    free_pod_interface, serve_from,
};
use crate::network::binding::tap::{ingress_filters, table};
use crate::network::error::ApplyError;
use crate::network::pod_interface::PodInterface;
use crate::network::resolv_conf::DnsConfig;

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
