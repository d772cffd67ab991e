//! Standalone mode's prober, the kubelet's part on Kubernetes: each VM's probes checked against its running guest,
//! their outcomes fed to [`GuestProbes`], and what it decides carried out. Checks run as tasks beside the
//! reconcile loop, so a slow guest delays no other VM; each pass collects those that ended and starts those due.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use futures::FutureExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::warn;
use vmlet_api::ProbeCheck;
use vmlet_control::{Client, Command};

use super::CONTROL_TIMEOUT;
use super::manifests::VmKey;
use super::pod::PodDir;
use crate::probe::{GuestProbes, Kind, Outcome, Readiness, check};

/// The probes of one run of one VM's guest.
struct Probing {
    /// The launcher whose guest this is: another launcher's guest is probed afresh.
    launcher: String,
    /// When the guest was first seen running: the probes' time starts there.
    since: Instant,
    probes: Option<GuestProbes>,
    checks: Vec<(Kind, ProbeCheck)>,
    /// Checks under way, with when each started.
    in_flight: Vec<(Kind, Duration, JoinHandle<Outcome>)>,
    /// The liveness probe failed and the guest was destroyed.
    ended: bool,
}

/// Carries out the probes of every VM whose guest runs: standalone mode's kubelet.
#[derive(Default)]
pub struct ProbeRunner {
    vms: BTreeMap<VmKey, Probing>,
}

impl ProbeRunner {
    /// One look at `key`'s probes while `launcher`'s guest runs in `pod`: the outcomes of checks that ended taken
    /// in, the checks that are due started, and a guest whose liveness probe failed destroyed, so that its run ends
    /// as failed. What the readiness probe says of the guest.
    pub async fn look(&mut self, key: &VmKey, pod: &PodDir, launcher: &str) -> Readiness {
        if self.vms.get(key).is_none_or(|p| p.launcher != launcher) {
            let probing = start(pod, launcher);
            self.vms.insert(key.clone(), probing);
        }
        let Some(probing) = self.vms.get_mut(key) else {
            return Readiness::Unprobed;
        };
        let Some(probes) = probing.probes.as_mut() else {
            return Readiness::Unprobed;
        };
        probing
            .in_flight
            .retain_mut(|(kind, started, task)| match task.now_or_never() {
                Some(outcome) => {
                    let outcome = outcome.unwrap_or_else(|e| Outcome::Failure(format!("the check failed: {e}")));
                    probes.record(*kind, outcome, *started);
                    false
                }
                None => true,
            });
        let elapsed = probing.since.elapsed();
        let guest = pod.read_record().map(|r| IpAddr::V4(r.address.addr()));
        for kind in probes.due(elapsed) {
            let busy = probing.in_flight.iter().any(|(k, ..)| *k == kind);
            let found = probing.checks.iter().find(|(k, _)| *k == kind);
            let (Some((_, probe_check)), Ok(guest), false) = (found, &guest, busy) else {
                continue;
            };
            let timeout = probes.prober(kind).map_or(Duration::from_secs(1), |p| p.timeout());
            let (probe_check, guest, control) = (probe_check.clone(), *guest, pod.run_dir().control_socket());
            let task = tokio::spawn(async move { check::run(&probe_check, guest, &control, timeout).await });
            probing.in_flight.push((kind, elapsed, task));
        }
        let verdict = probes.verdict();
        if let Some(why) = verdict.end_run
            && !probing.ended
        {
            warn!(vm = %key, reason = "LivenessProbeFailed", "{why}: destroying the guest");
            if let Err(err) = pod.note_ended_by_handler(&why) {
                warn!(vm = %key, error = format!("{err:#}"), "the run's end will not say why");
            }
            probing.ended = destroy(pod).await;
        }
        verdict.readiness
    }

    /// Forgets `key`'s probes: its guest does not run.
    pub fn forget(&mut self, key: &VmKey) {
        if let Some(probing) = self.vms.remove(key) {
            probing.in_flight.iter().for_each(|(_, _, task)| task.abort());
        }
    }
}

fn start(pod: &PodDir, launcher: &str) -> Probing {
    let spec = pod.read_vm().map(|vm| vm.spec.template.spec);
    let probes = spec.as_ref().ok().and_then(GuestProbes::of);
    let checks = spec
        .iter()
        .flat_map(|spec| {
            [
                (Kind::Readiness, &spec.readiness_probe),
                (Kind::Liveness, &spec.liveness_probe),
            ]
        })
        .filter_map(|(kind, probe)| Some((kind, probe.as_ref()?.check()?)))
        .collect();
    Probing {
        launcher: launcher.to_owned(),
        since: Instant::now(),
        probes,
        checks,
        in_flight: Vec::new(),
        ended: false,
    }
}

/// Destroys the guest through its launcher; whether the launcher took the request.
async fn destroy(pod: &PodDir) -> bool {
    let asked = async {
        let mut client = Client::connect(&pod.run_dir().control_socket(), CONTROL_TIMEOUT).await?;
        client.send(Command::Kill).await
    };
    match asked.await {
        Ok(_) => true,
        Err(err) => {
            warn!(pod = %pod.path().display(), error = %err, "cannot destroy the guest");
            false
        }
    }
}
