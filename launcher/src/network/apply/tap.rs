//! Applies the `tap` binding's plan: the pod interface freed of the pod's identity, the tap, the tc redirects between
//! them and the nftables table (see [`crate::network::binding::tap`]).

use std::net::IpAddr;

use crate::network::netlink::Netlink;

use super::{
    LinkNames, PodRecord, Wired, bring_up_silent, ensure_tap, free_pod_interface, hand_over_identity, serve_from,
};
use crate::network::binding::BindingRequest;
use crate::network::binding::bridge::DEFAULT_SERVER_ADDRESS;
use crate::network::binding::tap::{ingress_filters, table};
use crate::network::error::ApplyError;

/// Rewires the pod network for the guest, or finishes what an earlier launcher in this pod started.
pub(crate) async fn setup(request: &BindingRequest, handle: &impl Netlink) -> Result<Wired, ApplyError> {
    let names = LinkNames::for_interface(&request.interface)?;
    let state_file = request.state_file();
    let record = PodRecord::for_request(request, &state_file);
    let recorded = record
        .load_or_record(handle, Some(&names.pod_port), || Ok(None))
        .await?;
    let pod = &recorded.pod;
    // First, so that nothing the pod's stack sends ever reaches the pod network once it is renamed.
    handle
        .replace_tables(&[table(&names.pod_port, &names.tap)])
        .map_err(ApplyError::Nft)?;
    free_pod_interface(handle, pod, &names).await?;
    bring_up_silent(handle, pod.index, &names.pod_port, pod.mtu).await?;
    let tap = ensure_tap(handle, &names.tap).await?;
    let tap_index = tap.header.index;
    serve_from(handle, tap_index, &names.tap, IpAddr::V4(DEFAULT_SERVER_ADDRESS)).await?;
    bring_up_silent(handle, tap_index, &names.tap, pod.mtu).await?;
    handle
        .replace_ingress_filters(&ingress_filters(&names.pod_port, &names.tap))
        .map_err(ApplyError::Tc)?;
    let tap_name = names.tap.clone();
    let server_address = Some(DEFAULT_SERVER_ADDRESS);
    hand_over_identity(handle, request, names, (&tap_name, tap_index), server_address, recorded).await
}
