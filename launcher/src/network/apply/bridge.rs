//! Applies the `bridge` binding's plumbing, which `managedTap` shares (see [`crate::network::binding::bridge`]):
//! the pod interface becomes a port of a new bridge next to the tap that QEMU opens, and a placeholder keeps the
//! pod's addresses in view.
//!
//! What the pod interface looked like is recorded in a state file before anything changes, so a launcher restarted
//! in the same pod carries on from the record: every step checks what is already there and makes only the changes
//! that are missing.

use std::net::IpAddr;

use crate::network::netlink::Netlink;
use vmlet_api::Binding;

use super::{
    LinkNames, PodRecord, Wired, attach_port, ensure_bridge, ensure_tap, failed_to, free_pod_interface,
    hand_over_identity, no_ipv6_addresses, serve_from, stop_learning,
};
use crate::network::binding::BindingRequest;
use crate::network::binding::GUEST_FROM_POD;
use crate::network::binding::bridge::{DEFAULT_SERVER_ADDRESS, Guard, guard_table, guest_access_table};
use crate::network::error::ApplyError;

/// Rewires the pod network for the guest as `request` says (`bridge` or `managedTap`), or finishes what an earlier
/// launcher in this pod started. Running it again once it has succeeded changes nothing.
pub(crate) async fn setup(request: &BindingRequest, handle: &impl Netlink) -> Result<Wired, ApplyError> {
    let names = LinkNames::for_interface(&request.interface)?;
    let state_file = request.state_file();
    let recorded = PodRecord::for_request(request, &state_file)
        .load_or_record(handle, Some(&names.pod_port), || Ok(None))
        .await?;
    let pod = &recorded.pod;
    let server_address = (request.binding != Binding::ManagedTap).then_some(DEFAULT_SERVER_ADDRESS);
    // First, so that nothing the pod's stack sends on the bridge ever reaches the pod network. The rules match
    // the port by name, so they hold from the moment the pod interface takes it.
    let guard = match server_address {
        Some(_) => Guard::KeepAddressingInPod,
        None => Guard::PodStackOnly,
    };
    handle
        .replace_tables(&[guard_table(&names.pod_port, guard)])
        .map_err(ApplyError::Nft)?;

    let bridge = ensure_bridge(handle, &names.bridge, pod.mtu).await?;
    let bridge_index = bridge.header.index;
    match server_address {
        Some(server) => serve_from(handle, bridge_index, &names.bridge, IpAddr::V4(server)).await?,
        // Nothing to serve: the bridge has no business on either side, not even over IPv6, where it would
        // otherwise configure itself from the pod network's router advertisements.
        None => no_ipv6_addresses(handle, &bridge, &names.bridge).await?,
    }
    handle
        .set_link(rtnetlink::LinkUnspec::new_with_index(bridge_index).up().build())
        .await
        .map_err(failed_to("bring the bridge up"))?;
    free_pod_interface(handle, pod, &names).await?;
    attach_port(handle, pod.index, &names.pod_port, bridge_index, pod.mtu).await?;
    stop_learning(handle, pod.index).await?;
    let tap = ensure_tap(handle, &names.tap).await?;
    attach_port(handle, tap.header.index, &names.tap, bridge_index, pod.mtu).await?;
    let bridge_name = names.bridge.clone();
    let wired = hand_over_identity(
        handle,
        request,
        names,
        (&bridge_name, bridge_index),
        server_address,
        recorded,
    )
    .await?;
    if let (Some(server), Some(guest)) = (server_address, wired.pod.ipv4.first()) {
        let guest = guest.addr();
        handle
            .replace_tables(&[guest_access_table(&wired.tap, wired.served_link_mac, guest, server)])
            .map_err(ApplyError::Nft)?;
        handle
            .replace_host_route(GUEST_FROM_POD, bridge_index, server)
            .await
            .map_err(failed_to("route the pod's way to its guest"))?;
        handle
            .replace_neighbour(bridge_index, IpAddr::V4(GUEST_FROM_POD), wired.guest_mac)
            .await
            .map_err(failed_to("tell the pod where its guest is"))?;
    }
    Ok(wired)
}
