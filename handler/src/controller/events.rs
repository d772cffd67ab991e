//! The controller's Events (`events.k8s.io/v1`), published as kube-runtime's `Recorder` does, with a series for a
//! repeat, but remembering far less per Event.
//!
//! The `Recorder` keeps every Event it published, whole and with its key (about 2 KiB each with the table around
//! them), for six minutes, and forgets old ones only when it publishes the next, walking all of them each time. A
//! start of 10,000 VMs publishes about 25,000 Events: 71 MiB of the controller's heap went to that table alone (a heap
//! profile in `docs/benchmarks.md`, "Scale"). Here a repeat is recognised by a hash of what makes two Events the same
//! (the object, the related object, type, reason, action and note), and only the Event's name, its count and when
//! it was last seen are kept, in a queue by time that is trimmed from the front.

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as KubeEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

/// How long a published Event takes repeats into its series (client-go's and kube-runtime's figure).
const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// One Event about one object.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub warning: bool,
    pub reason: String,
    pub note: String,
    /// What the controller did, or was doing, in one word (`StartLauncher`).
    pub action: String,
    /// The object the action was on, if not the Event's own object (the launcher Pod).
    pub related: Option<ObjectReference>,
}

/// Publishes Events as one controller instance.
pub struct Publisher {
    client: kube::Client,
    controller: String,
    instance: String,
    series: Mutex<Series>,
}

impl Publisher {
    pub fn new(client: kube::Client, controller: &str, instance: &str) -> Publisher {
        Publisher {
            client,
            controller: controller.to_owned(),
            instance: instance.to_owned(),
            series: Mutex::default(),
        }
    }

    /// Publishes `event` about `regarding`: a new Event, or the series of the same Event published within the
    /// last six minutes, one more.
    pub async fn publish(&self, event: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let events: Api<KubeEvent> = Api::namespaced(self.client.clone(), namespace);
        let key = key_of(event, regarding);
        let repeat = self.series.lock().unwrap_or_else(|e| e.into_inner()).repeat(key, now);
        match repeat {
            Some(Repeat { name, count }) => {
                let series = EventSeries {
                    count,
                    last_observed_time: MicroTime(now),
                };
                let patch = json!({ "series": series });
                events
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
            }
            None => {
                let published = self.new_event(event, regarding, now);
                let created = events.create(&PostParams::default(), &published).await?;
                // The name the API server kept; ours, should its answer not say.
                let name = created.metadata.name.or(published.metadata.name).unwrap_or_default();
                self.series
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .record(key, name, now);
            }
        }
        Ok(())
    }

    fn new_event(&self, event: &Event, regarding: &ObjectReference, now: Timestamp) -> KubeEvent {
        let object = regarding.name.as_deref().unwrap_or(&self.controller);
        KubeEvent {
            metadata: ObjectMeta {
                // As client-go names them: unique per object and time.
                name: Some(format!("{object}.{:x}", now.as_nanosecond())),
                namespace: regarding.namespace.clone(),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(if event.warning { "Warning" } else { "Normal" }.into()),
            reason: Some(event.reason.clone()),
            note: Some(event.note.clone()),
            action: Some(event.action.clone()),
            regarding: Some(regarding.clone()),
            related: event.related.clone(),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..KubeEvent::default()
        }
    }
}

/// What makes two Events the same, hashed: the object (by uid, so a VM made again under the same name starts
/// afresh), the related object, type, reason, action and note. A collision of two 64-bit hashes within six minutes
/// would count one Event in the other's series, which is far less likely than anything else here going wrong.
fn key_of(event: &Event, regarding: &ObjectReference) -> u64 {
    let mut hasher = DefaultHasher::new();
    let object = |reference: &ObjectReference| {
        (
            reference.uid.clone(),
            reference.kind.clone(),
            reference.namespace.clone(),
            reference.name.clone(),
        )
    };
    object(regarding).hash(&mut hasher);
    event.related.as_ref().map(object).hash(&mut hasher);
    (event.warning, &event.reason, &event.action, &event.note).hash(&mut hasher);
    hasher.finish()
}

/// The Events published within the window, by key: their names and counts, and the order they were last seen in.
#[derive(Debug, Default)]
struct Series {
    live: HashMap<u64, Published>,
    /// Keys by the time they were last seen, oldest first; an entry whose time is no longer its key's last sighting
    /// is skipped.
    by_time: VecDeque<(Timestamp, u64)>,
}

#[derive(Debug)]
struct Published {
    name: String,
    count: i32,
    last: Timestamp,
}

/// A repeat of a published Event: its name, and its count with this one.
#[derive(Debug, PartialEq, Eq)]
struct Repeat {
    name: String,
    count: i32,
}

impl Series {
    /// The Event `key` repeats, seen again at `now`; `None` when it is new.
    fn repeat(&mut self, key: u64, now: Timestamp) -> Option<Repeat> {
        self.forget_before(now - SERIES_WINDOW);
        let published = self.live.get_mut(&key)?;
        published.count += 1;
        published.last = now;
        self.by_time.push_back((now, key));
        Some(Repeat {
            name: published.name.clone(),
            count: published.count,
        })
    }

    /// A new Event published at `now` under `name`.
    fn record(&mut self, key: u64, name: String, now: Timestamp) {
        match self.live.entry(key) {
            // Published meanwhile by another reconciliation: the newest name takes the repeats.
            Entry::Occupied(mut occupied) => {
                *occupied.get_mut() = Published {
                    name,
                    count: 1,
                    last: now,
                }
            }
            Entry::Vacant(vacant) => {
                vacant.insert(Published {
                    name,
                    count: 1,
                    last: now,
                });
            }
        }
        self.by_time.push_back((now, key));
    }

    fn forget_before(&mut self, oldest: Timestamp) {
        while let Some(&(seen, key)) = self.by_time.front() {
            if seen > oldest {
                break;
            }
            self.by_time.pop_front();
            if self.live.get(&key).is_some_and(|p| p.last == seen) {
                self.live.remove(&key);
            }
        }
        // A mass start leaves a large table behind; give it back once most of it is gone.
        if self.live.capacity() > 64 && self.live.len() < self.live.capacity() / 4 {
            self.live.shrink_to_fit();
            self.by_time.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn reference(uid: &str) -> ObjectReference {
        ObjectReference {
            kind: Some("VirtualMachine".into()),
            namespace: Some("ns".into()),
            name: Some("vm1".into()),
            uid: Some(uid.into()),
            ..ObjectReference::default()
        }
    }

    fn event(note: &str) -> Event {
        Event {
            warning: false,
            reason: "Started".into(),
            note: note.into(),
            action: "Observe".into(),
            related: None,
        }
    }

    #[test]
    fn a_repeat_within_the_window_is_the_series_of_the_first() {
        let mut series = Series::default();
        let key = key_of(&event("the VM is Running"), &reference("u1"));
        assert_eq!(series.repeat(key, at(0)), None);
        series.record(key, "vm1.1".into(), at(0));
        let second = series.repeat(key, at(60));
        assert_eq!(
            second,
            Some(Repeat {
                name: "vm1.1".into(),
                count: 2
            })
        );
        // Six minutes after the last sighting, not the first: a new Event.
        assert_eq!(series.repeat(key, at(60 + 359)).map(|r| r.count), Some(3));
        assert_eq!(series.repeat(key, at(60 + 359 + 360)), None);
        assert!(series.live.is_empty());
    }

    #[test]
    fn events_differ_by_object_related_object_and_words() {
        let base = key_of(&event("the VM is Running"), &reference("u1"));
        // The same VM made again under its name is another object.
        assert_ne!(base, key_of(&event("the VM is Running"), &reference("u2")));
        assert_ne!(base, key_of(&event("the VM is Stopped"), &reference("u1")));
        let mut restart = event("the VM is Running");
        restart.related = Some(ObjectReference {
            kind: Some("Pod".into()),
            name: Some("vm1-launcher-b".into()),
            ..ObjectReference::default()
        });
        assert_ne!(base, key_of(&restart, &reference("u1")));
        let mut warning = event("the VM is Running");
        warning.warning = true;
        assert_ne!(base, key_of(&warning, &reference("u1")));
    }

    #[test]
    fn old_events_are_forgotten_and_their_table_given_back() {
        let mut series = Series::default();
        for n in 0..10_000u64 {
            series.record(n, format!("vm{n}.1"), at(0));
        }
        let grown = series.live.capacity();
        assert_eq!(series.repeat(u64::MAX, at(361)), None);
        assert!(series.live.is_empty() && series.by_time.is_empty());
        assert!(
            series.live.capacity() < grown / 4,
            "{} of {grown}",
            series.live.capacity()
        );
    }
}
