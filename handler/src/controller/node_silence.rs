//! When a node falls silent: its heartbeat Lease goes unrenewed for the node timeout. Nothing in the API changes
//! then, so no watch tells the controller; one timer for all nodes does, and every VM is looked at once (those on
//! the silent node are marked failed). A timer per VM instead would look at every VM once per heartbeat period,
//! a list and a get each, forever.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, ResourceExt};
use tokio::sync::mpsc;

use crate::lifecycle::{NodeHealth, node_health};

/// How often the nodes' Leases are looked at: how late, at most, a silent node is noticed.
const LOOK_EVERY: Duration = Duration::from_secs(5);

/// The nodes found silent so far, so that each silence counts once.
#[derive(Debug, Default)]
pub struct Silences {
    silent: BTreeSet<String>,
}

impl Silences {
    /// Takes in each node's last heartbeat; whether a node fell silent since the last look. A node heard from
    /// again is forgotten, so that its next silence counts.
    pub fn fell_silent(
        &mut self,
        heartbeats: impl IntoIterator<Item = (String, Option<Timestamp>)>,
        timeout: Duration,
        now: Timestamp,
    ) -> bool {
        let mut fell = false;
        for (node, heartbeat) in heartbeats {
            if node_health(heartbeat, timeout, now) == NodeHealth::Lost {
                fell |= self.silent.insert(node);
            } else {
                self.silent.remove(&node);
            }
        }
        fell
    }
}

/// Watches the nodes' Leases in `leases`' namespace and sends `()` each time a node falls silent.
pub async fn watch(leases: Api<Lease>, timeout: Duration, silence: mpsc::Sender<()>) {
    let (store, writer) = reflector::store();
    let mut events = reflector(writer, watcher(leases, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .boxed();
    let mut look = tokio::time::interval(LOOK_EVERY);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut silences = Silences::default();
    loop {
        tokio::select! {
            // The store follows the watch as it is polled; errors are retried with back-off.
            event = events.next() => if event.is_none() { return },
            _ = look.tick() => {
                let heartbeats = store.state().into_iter().filter_map(|lease| {
                    let node = crate::cluster::node_of_lease(&lease.name_any())?.to_owned();
                    let spec = lease.spec.as_ref()?;
                    Some((node, spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(|t| t.0)))
                });
                if silences.fell_silent(heartbeats, timeout, Timestamp::now()) && silence.send(()).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_counts_once_when_it_falls_silent_and_again_after_it_was_heard() {
        let timeout = Duration::from_secs(40);
        let at = |s: i64| Timestamp::from_second(s).unwrap();
        let mut silences = Silences::default();
        let beats = |a: i64, b: i64| [("a".to_owned(), Some(at(a))), ("b".to_owned(), Some(at(b)))];
        assert!(
            !silences.fell_silent(beats(100, 100), timeout, at(130)),
            "both renewed in time"
        );
        assert!(silences.fell_silent(beats(100, 125), timeout, at(141)), "a fell silent");
        assert!(
            !silences.fell_silent(beats(100, 135), timeout, at(146)),
            "a is still silent: once"
        );
        assert!(!silences.fell_silent(beats(150, 145), timeout, at(151)), "a is back");
        assert!(
            silences.fell_silent(beats(150, 145), timeout, at(191)),
            "a and b fell silent"
        );
        assert!(
            !silences.fell_silent([("c".to_owned(), None)], timeout, at(191)),
            "a node that never beat is unknown, not silent"
        );
    }
}
