//! A VM's readiness and liveness probes as Kubernetes runs them, as a pure state machine: each check's outcome
//! in, whether the VM is ready and whether its run must end out. Standalone mode carries out the checks
//! ([`check`]) and feeds them in; on Kubernetes the kubelet probes the launcher Pod and its Ready condition is
//! read instead ([`Readiness`] either way).
//!
//! The rules are the kubelet's: a readiness probe fails until it first passes and then flips after
//! `successThreshold` successes or `failureThreshold` failures in a row; a liveness probe passes until
//! `failureThreshold` failures in a row. Nothing is checked before `initialDelaySeconds`, and checks are
//! `periodSeconds` apart. Time is the time since the guest started running, so that the machine needs no clock.

pub mod check;

use std::time::Duration;

use vmlet_api::{Probe, ProbeTiming, VirtualMachineInstanceSpec};

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Why it failed, for the VM's condition and log.
    Failure(String),
}

/// Whether the guest is ready, as the VM's Ready condition says it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Readiness {
    /// The VM has no readiness probe: it is ready while its guest runs.
    #[default]
    Unprobed,
    Ready,
    /// Why not.
    NotReady(String),
}

/// One probe's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prober {
    timing: ProbeTiming,
    passing: bool,
    /// Outcomes in a row that disagree with `passing`.
    streak: u32,
    last_failure: Option<String>,
    next_check: Duration,
}

impl Prober {
    /// A readiness probe: failing until it passes.
    pub fn readiness(timing: ProbeTiming) -> Prober {
        Prober::new(timing, false)
    }

    /// A liveness probe: passing until it fails.
    pub fn liveness(timing: ProbeTiming) -> Prober {
        Prober::new(timing, true)
    }

    fn new(timing: ProbeTiming, passing: bool) -> Prober {
        Prober {
            timing,
            passing,
            streak: 0,
            last_failure: None,
            next_check: timing.initial_delay,
        }
    }

    /// Whether a check is due `elapsed` after the guest started.
    pub fn due(&self, elapsed: Duration) -> bool {
        elapsed >= self.next_check
    }

    /// How long a check may take.
    pub fn timeout(&self) -> Duration {
        self.timing.timeout
    }

    /// Takes the outcome of the check started `started` after the guest started; the next is due a period later.
    pub fn record(&mut self, outcome: Outcome, started: Duration) {
        self.next_check = started + self.timing.period;
        let success = outcome == Outcome::Success;
        if let Outcome::Failure(why) = outcome {
            self.last_failure = Some(why);
        }
        if success == self.passing {
            self.streak = 0;
            return;
        }
        self.streak += 1;
        let needed = if success {
            self.timing.success_threshold
        } else {
            self.timing.failure_threshold
        };
        if self.streak >= needed {
            self.passing = success;
            self.streak = 0;
        }
    }

    pub fn passing(&self) -> bool {
        self.passing
    }

    /// The last failure's words, if a check failed.
    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }
}

/// Which of a VM's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Readiness,
    Liveness,
}

/// A VM's probes over one run of its guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestProbes {
    readiness: Option<Prober>,
    liveness: Option<Prober>,
}

/// What the probes decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub readiness: Readiness,
    /// The liveness probe failed: end the run, as a failure, for this reason.
    pub end_run: Option<String>,
}

impl GuestProbes {
    /// The probes of `spec`, none of which has checked anything yet; `None` when it has none.
    pub fn of(spec: &VirtualMachineInstanceSpec) -> Option<GuestProbes> {
        let timing = |probe: &Option<Probe>| probe.as_ref().map(Probe::timing);
        let probes = GuestProbes {
            readiness: timing(&spec.readiness_probe).map(Prober::readiness),
            liveness: timing(&spec.liveness_probe).map(Prober::liveness),
        };
        (probes.readiness.is_some() || probes.liveness.is_some()).then_some(probes)
    }

    pub fn prober(&self, kind: Kind) -> Option<&Prober> {
        match kind {
            Kind::Readiness => self.readiness.as_ref(),
            Kind::Liveness => self.liveness.as_ref(),
        }
    }

    /// The probes whose check is due `elapsed` after the guest started.
    pub fn due(&self, elapsed: Duration) -> Vec<Kind> {
        [Kind::Readiness, Kind::Liveness]
            .into_iter()
            .filter(|&kind| self.prober(kind).is_some_and(|p| p.due(elapsed)))
            .collect()
    }

    pub fn record(&mut self, kind: Kind, outcome: Outcome, started: Duration) {
        let prober = match kind {
            Kind::Readiness => self.readiness.as_mut(),
            Kind::Liveness => self.liveness.as_mut(),
        };
        if let Some(prober) = prober {
            prober.record(outcome, started);
        }
    }

    pub fn verdict(&self) -> Verdict {
        let readiness = match &self.readiness {
            None => Readiness::Unprobed,
            Some(p) if p.passing() => Readiness::Ready,
            Some(p) => Readiness::NotReady(match p.last_failure() {
                Some(why) => format!("the readiness probe failed: {why}"),
                None => "the readiness probe has not passed yet".into(),
            }),
        };
        let end_run = self
            .liveness
            .as_ref()
            .filter(|p| !p.passing())
            .map(|p| format!("the liveness probe failed: {}", p.last_failure().unwrap_or("no answer")));
        Verdict { readiness, end_run }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(initial: u64, period: u64, success: u32, failure: u32) -> ProbeTiming {
        ProbeTiming {
            initial_delay: Duration::from_secs(initial),
            period: Duration::from_secs(period),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn fail(why: &str) -> Outcome {
        Outcome::Failure(why.into())
    }

    /// Feeds `outcomes` to `prober`, one check each time it is due, from the first second it is; what it says
    /// after each.
    fn run(mut prober: Prober, outcomes: &[Outcome]) -> Vec<bool> {
        let mut said = Vec::new();
        let mut now = s(0);
        for outcome in outcomes {
            while !prober.due(now) {
                now += s(1);
            }
            prober.record(outcome.clone(), now);
            said.push(prober.passing());
        }
        said
    }

    #[test]
    fn nothing_is_checked_before_the_initial_delay_and_then_once_a_period() {
        let mut prober = Prober::readiness(timing(15, 5, 1, 3));
        assert!(!prober.due(s(14)));
        assert!(prober.due(s(15)));
        prober.record(Outcome::Success, s(16));
        assert!(!prober.due(s(20)));
        assert!(prober.due(s(21)));
    }

    #[test]
    fn readiness_fails_until_it_passes_and_flips_on_its_thresholds() {
        let ok = Outcome::Success;
        assert_eq!(
            run(
                Prober::readiness(timing(0, 1, 2, 3)),
                &[
                    fail("refused"),
                    ok.clone(),
                    ok.clone(),
                    fail("refused"),
                    fail("refused"),
                    ok.clone(),
                    fail("refused"),
                    fail("refused"),
                    fail("refused"),
                    ok.clone(),
                    ok.clone(),
                ]
            ),
            [false, false, true, true, true, true, true, true, false, false, true]
        );
    }

    #[test]
    fn liveness_passes_until_its_failure_threshold_of_failures_in_a_row() {
        let ok = Outcome::Success;
        assert_eq!(
            run(
                Prober::liveness(timing(0, 10, 1, 3)),
                &[fail("a"), fail("b"), ok.clone(), fail("c"), fail("d"), fail("e")]
            ),
            [true, true, true, true, true, false]
        );
    }

    fn probes(readiness: Option<ProbeTiming>, liveness: Option<ProbeTiming>) -> GuestProbes {
        GuestProbes {
            readiness: readiness.map(Prober::readiness),
            liveness: liveness.map(Prober::liveness),
        }
    }

    #[test]
    fn the_verdict_says_why_the_guest_is_not_ready_and_why_its_run_ends() {
        let mut vm = probes(Some(timing(0, 1, 1, 1)), Some(timing(5, 1, 1, 2)));
        assert_eq!(vm.due(s(0)), [Kind::Readiness]);
        assert_eq!(
            vm.verdict(),
            Verdict {
                readiness: Readiness::NotReady("the readiness probe has not passed yet".into()),
                end_run: None,
            }
        );
        vm.record(Kind::Readiness, fail("connection refused"), s(0));
        assert_eq!(
            vm.verdict().readiness,
            Readiness::NotReady("the readiness probe failed: connection refused".into())
        );
        vm.record(Kind::Readiness, Outcome::Success, s(1));
        assert_eq!(vm.verdict().readiness, Readiness::Ready);
        assert_eq!(vm.due(s(5)), [Kind::Readiness, Kind::Liveness]);
        vm.record(Kind::Liveness, fail("timed out"), s(5));
        assert_eq!(vm.verdict().end_run, None);
        vm.record(Kind::Liveness, fail("timed out"), s(6));
        assert_eq!(
            vm.verdict().end_run.as_deref(),
            Some("the liveness probe failed: timed out")
        );
        // Readiness is the readiness probe's alone.
        assert_eq!(vm.verdict().readiness, Readiness::Ready);
    }

    #[test]
    fn a_vm_without_a_readiness_probe_is_unprobed() {
        let vm = probes(None, Some(timing(0, 1, 1, 1)));
        assert_eq!(vm.verdict().readiness, Readiness::Unprobed);
        assert_eq!(GuestProbes::of(&VirtualMachineInstanceSpec::default()), None);
    }
}
