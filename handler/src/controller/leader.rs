//! Leader election through a `coordination.k8s.io` Lease, as client-go's `leaderelection` does it: the holder
//! renews the Lease well within its duration; a candidate takes it over once it has gone unrenewed for longer than
//! that. Every write carries the `resourceVersion` it read, so of two candidates only one wins.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;

/// What a candidate does about the Lease as it finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It holds the Lease: renew it.
    Renew,
    /// Nobody holds it, or its holder let it expire: take it, counting one more transition.
    Acquire { transitions: i32 },
    /// Someone else holds it; it expires in `expires_in` unless renewed.
    Follow { holder: String, expires_in: Duration },
}

/// Decides from the Lease's spec (`None`: there is no Lease).
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire { transitions: 0 };
    };
    let transitions = spec.lease_transitions.unwrap_or(0);
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == identity {
        return Decision::Renew;
    }
    let next = Decision::Acquire {
        transitions: transitions.saturating_add(1),
    };
    if holder.is_empty() {
        return next;
    }
    let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0).unsigned_abs().into());
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()).map(|t| t.0);
    let Some(renewed) = renewed else {
        return next;
    };
    let age = Duration::try_from(now.duration_since(renewed)).unwrap_or(Duration::ZERO);
    if age > duration {
        next
    } else {
        Decision::Follow {
            holder: holder.to_owned(),
            expires_in: duration - age,
        }
    }
}

/// One candidate for one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    lease_duration: Duration,
}

impl LeaderElector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, lease_duration: Duration) -> Self {
        Self {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease_duration,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Acquires or renews the Lease at `now`: whether this candidate holds it afterwards. Losing a race to another
    /// candidate is no error, only `false`.
    pub async fn try_lead(&self, now: Timestamp) -> Result<bool, kube::Error> {
        let found = self.api.get_opt(&self.name).await?;
        let decision = decide(found.as_ref().and_then(|l| l.spec.as_ref()), &self.identity, now);
        let spec = match (&decision, &found) {
            (Decision::Follow { .. }, _) => return Ok(false),
            (Decision::Renew, Some(lease)) => LeaseSpec {
                renew_time: Some(MicroTime(now)),
                lease_duration_seconds: Some(self.duration_seconds()),
                ..lease.spec.clone().unwrap_or_default()
            },
            (Decision::Renew, None) | (Decision::Acquire { .. }, _) => LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.duration_seconds()),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(match decision {
                    Decision::Acquire { transitions } => transitions,
                    _ => 0,
                }),
                ..LeaseSpec::default()
            },
        };
        let written = match found {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                lease.spec = Some(spec);
                self.api.replace(&self.name, &PostParams::default(), &lease).await
            }
        };
        match written {
            Ok(_) => Ok(true),
            // Another candidate wrote first (409 on create or on a stale resourceVersion).
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Gives the Lease up, if this candidate holds it, so that the next leader need not wait for it to expire.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            other => other.map(drop),
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }
}
