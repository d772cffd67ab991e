//! When a VM's launcher runs: the run strategy (KubeVirt's semantics) and the crash-loop back-off, as a pure
//! function from what is observed to a plan.
//!
//! Nothing here knows what a launcher is made of: the controller's launcher is a Pod, standalone mode's a network
//! namespace and a process. Both observe it as a [`Launcher`], carry out the plan's [`LauncherAction`], and write
//! the plan's status. The status is also this module's memory (the phase a run ended in, the restart count, the
//! back-off), so a restarted handler decides exactly as the one before it did; and it holds the node's report on
//! the launcher (`status.launcher`, `crate::vm_status`), from which the plan learns whether the guest runs, is
//! paused, or was lost, and how a launcher whose Pod is gone ended.
//!
//! | strategy | starts the launcher | after the guest ends |
//! | --- | --- | --- |
//! | `Always` | at once | restarts it, with back-off after a failure |
//! | `RerunOnFailure` | at once | restarts it after a failure (with back-off), not after a clean end |
//! | `Once` | when it never ran | never restarts it |
//! | `Manual` | on a `start` request | never restarts it; `stop` requests stop it |
//! | `Halted` | never | (stops a running one) |

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use vmlet_api::{
    Condition, ConditionType, GuestExit, LauncherReport, Phase, PhaseTransition, PrintableStatus, ReportedState,
    RunStrategy, StartFailure, VirtualMachineStatus,
};

use crate::probe::Readiness;

/// The first automatic restart after a failure waits this long; each further failure in a row doubles it.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// The longest wait between automatic restarts.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// A run that lasted this long ends a crash loop: the next failure waits [`BACKOFF_INITIAL`] again.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(600);
/// How often a VM whose launcher's node stopped answering is looked at again.
pub const NODE_LOST_RECHECK: Duration = Duration::from_secs(30);
/// How often a VM waiting for a claim that does not exist is looked at again (the controller does not watch
/// claims).
pub const CLAIM_RECHECK: Duration = Duration::from_secs(15);
/// The reason of the Ready and Failure conditions while a claim is missing (KubeVirt's).
const CLAIM_NOT_FOUND: &str = "FailedPvcNotFound";

/// The wait before the automatic start that follows `consecutive_failures` failed runs in a row.
pub fn backoff(consecutive_failures: u32) -> Duration {
    let doublings = consecutive_failures.saturating_sub(1).min(31);
    BACKOFF_INITIAL.saturating_mul(1 << doublings).min(BACKOFF_MAX)
}

/// A request to start or stop a `Manual` VM (the value of [`vmlet_api::RUN_ANNOTATION`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunRequest {
    Start,
    Stop,
    /// A value that is neither; it is dropped with a warning.
    Invalid(String),
}

impl RunRequest {
    pub fn parse(value: &str) -> Self {
        match value.trim() {
            "start" => Self::Start,
            "stop" => Self::Stop,
            other => Self::Invalid(other.to_owned()),
        }
    }
}

/// How a launcher's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// Exit code 0: the guest powered off, or shut down when asked.
    Succeeded,
    /// Any other end. `code` is the launcher's exit code when it exited (1: it never ran the guest, 3: the guest
    /// was destroyed, 4: the guest crashed); `None` when it was killed or vanished with no code.
    Failed { code: Option<i32>, reason: Option<String> },
    /// Its node reported it lost (silent for too long, or its Pod gone while it ran): how it ended is unknown.
    Lost { message: String },
}

impl Exit {
    fn failed(&self) -> bool {
        !matches!(self, Self::Succeeded)
    }
}

/// What is observed of the VM's launcher. `id` names one launcher instance (a Pod's uid, a process's start), so
/// that a failure is counted once however often it is seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launcher {
    Absent,
    /// Made, not running yet: waiting for a node (`node` is `None`; `unschedulable` says why it cannot get one),
    /// or starting on one.
    Pending {
        id: String,
        node: Option<String>,
        unschedulable: Option<String>,
    },
    Running {
        id: String,
        node: Option<String>,
        since: Timestamp,
    },
    /// Its run is over, and the launcher is still there to be looked at.
    Ended {
        id: String,
        node: Option<String>,
        started: Option<Timestamp>,
        finished: Timestamp,
        exit: Exit,
    },
    /// Asked to stop, and not gone yet.
    Terminating {
        id: String,
        node: Option<String>,
    },
}

impl Launcher {
    fn node(&self) -> Option<&str> {
        match self {
            Self::Absent => None,
            Self::Pending { node, .. }
            | Self::Running { node, .. }
            | Self::Ended { node, .. }
            | Self::Terminating { node, .. } => node.as_deref(),
        }
    }
}

/// Whether the node the launcher is on still answers ([`node_health`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeHealth {
    Alive,
    /// It stopped answering: the launcher's state as last reported may be long out of date.
    Lost,
    /// Not known (no node, or a node that never reported).
    Unknown,
}

/// Judges a node by the last heartbeat of its node role: alive while that is younger than `timeout`. A heartbeat from the
/// future (clocks that disagree) counts as fresh.
pub fn node_health(last_heartbeat: Option<Timestamp>, timeout: Duration, now: Timestamp) -> NodeHealth {
    match last_heartbeat {
        None => NodeHealth::Unknown,
        Some(at) if duration_between(at, now) > timeout => NodeHealth::Lost,
        Some(_) => NodeHealth::Alive,
    }
}

/// Everything [`plan`] decides from.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    pub run_strategy: RunStrategy,
    /// A pending start or stop request, if any.
    pub request: Option<RunRequest>,
    /// The VM itself is being deleted: its launcher must go before it may.
    pub deleting: bool,
    /// Why the spec cannot run, if it cannot (`VirtualMachineInstanceSpec::validate`); no launcher is made for it.
    pub spec_error: Option<String>,
    pub status: &'a VirtualMachineStatus,
    pub launcher: Launcher,
    /// What the readiness probe says of the guest, if the VM has one: a running guest is Ready only while it
    /// passes.
    pub readiness: Readiness,
    pub node: NodeHealth,
    pub now: Timestamp,
}

/// What only a cluster shows of why a launcher cannot run, beside the [`Observation`] (standalone mode has none of
/// these); [`plan_with`] reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Obstacles {
    /// A claim the VM names does not exist: no launcher is made until it does. Known only when the launcher is
    /// about to be made (the controller reads the claims then).
    pub missing_claim: Option<MissingClaim>,
    /// The pending launcher's Pod cannot pull an image (a containerDisk's, say).
    pub image_pull: Option<ImagePull>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingClaim {
    pub volume: String,
    pub claim: String,
}

/// A container of the launcher's Pod waiting for its image, or an image volume's, that could not be pulled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePull {
    /// The kubelet waits before it tries again (`ImagePullBackOff`), or the last try failed (`ErrImagePull`).
    pub backing_off: bool,
    /// The kubelet's words.
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LauncherAction {
    None,
    Create,
    /// Stop the launcher and remove it (gracefully: the guest gets its ACPI shutdown).
    Delete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Normal,
    Warning,
}

/// An event to record on the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// UpperCamelCase, as Kubernetes event reasons are.
    pub reason: &'static str,
    pub message: String,
}

/// What to do, and what to report.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub action: LauncherAction,
    /// The lifecycle's part of the status: phase, printable status, the Ready and Failure conditions, node name,
    /// restart count, back-off and phase transitions. The other fields are left empty for their writers.
    pub status: VirtualMachineStatus,
    pub events: Vec<Event>,
    /// Look again after this long even if nothing changes (a back-off that ends, a run that becomes long enough).
    pub requeue_after: Option<Duration>,
    /// The run request was acted on (or refused) and should be removed.
    pub consume_request: bool,
    /// The VM is being deleted and its launcher is gone: nothing holds it any longer.
    pub release: bool,
}

/// What the run strategy wants of the launcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Desire {
    /// Have it running. `automatic`: the strategy's own (re)start, subject to back-off and counted as a restart;
    /// otherwise a person's request.
    Run { automatic: bool },
    /// Have none.
    Stop,
    /// Leave it be: do not start one, do not stop one.
    Leave,
}

/// Decides what to do about one VM's launcher.
pub fn plan(obs: &Observation<'_>) -> Plan {
    plan_with(obs, &Obstacles::default())
}

/// [`plan`], knowing what stands in the launcher's way.
pub fn plan_with(obs: &Observation<'_>, obstacles: &Obstacles) -> Plan {
    let report = reported(obs.status);
    let obs = Observation {
        launcher: with_report(&obs.launcher, report, obs.now),
        ..obs.clone()
    };
    Planner::new(&obs, report, obstacles).decide()
}

/// The node's report on the VM's launcher, if it is about the launcher the status follows (`launcherPod`); a
/// report on an earlier launcher says nothing about this one.
pub fn reported(status: &VirtualMachineStatus) -> Option<&LauncherReport> {
    status
        .launcher
        .as_ref()
        .filter(|r| status.launcher_pod.as_deref() == Some(r.pod.as_str()))
}

/// The launcher as observed, completed by its node's report: a running launcher the node lost has ended, and an
/// ended one whose Pod gave no exit code ended as its node saw it.
fn with_report(launcher: &Launcher, report: Option<&LauncherReport>, now: Timestamp) -> Launcher {
    let Some(report) = report else {
        return launcher.clone();
    };
    match launcher {
        Launcher::Running { id, node, since } if report.state == ReportedState::Lost => Launcher::Ended {
            id: id.clone(),
            node: node.clone(),
            started: Some(*since),
            finished: now,
            exit: Exit::Lost {
                message: report.message.clone().unwrap_or_default(),
            },
        },
        Launcher::Ended {
            id,
            node,
            started,
            finished,
            exit: Exit::Failed { code: None, reason },
        } => {
            let exit = match report_exit(report) {
                Some(Exit::Failed { code, .. }) => Exit::Failed {
                    code,
                    reason: reason.clone(),
                },
                Some(Exit::Succeeded) => Exit::Succeeded,
                _ => return launcher.clone(),
            };
            Launcher::Ended {
                id: id.clone(),
                node: node.clone(),
                started: *started,
                finished: *finished,
                exit,
            }
        }
        _ => launcher.clone(),
    }
}

/// How the node saw the launcher end, if it did: its exit code first, then what the launcher said of its guest.
fn report_exit(report: &LauncherReport) -> Option<Exit> {
    let failed = |code| Exit::Failed {
        code: Some(code),
        reason: None,
    };
    if let Some(code) = report.exit_code {
        return Some(if code == 0 { Exit::Succeeded } else { failed(code) });
    }
    match (report.state, report.guest_exit) {
        (ReportedState::Lost, _) => Some(Exit::Lost {
            message: report.message.clone().unwrap_or_default(),
        }),
        (_, Some(GuestExit::PoweredOff | GuestExit::ShutDown)) => Some(Exit::Succeeded),
        (_, Some(GuestExit::Destroyed)) => Some(failed(3)),
        (_, Some(GuestExit::Crashed)) => Some(failed(4)),
        (ReportedState::Failed, None) => Some(failed(1)),
        _ => None,
    }
}

/// Builds one plan: the observation, the status as it will be written, and what was decided so far.
struct Planner<'o, 'a> {
    obs: &'o Observation<'a>,
    /// The node's report on the launcher the status follows.
    report: Option<&'o LauncherReport>,
    obstacles: &'o Obstacles,
    phase: Option<Phase>,
    printable: PrintableStatus,
    /// The Ready condition: `True`, `False` or `Unknown`, its reason and message.
    ready: (&'static str, &'static str, String),
    failure: Option<(&'static str, String)>,
    restart_count: u32,
    start_failure: Option<StartFailure>,
    action: LauncherAction,
    events: Vec<Event>,
    requeue_after: Option<Duration>,
    consume_request: bool,
    release: bool,
}

impl<'o, 'a> Planner<'o, 'a> {
    fn new(obs: &'o Observation<'a>, report: Option<&'o LauncherReport>, obstacles: &'o Obstacles) -> Self {
        let previous = obs.status;
        Self {
            obs,
            report,
            obstacles,
            phase: previous.phase,
            printable: previous.printable_status.unwrap_or(PrintableStatus::Stopped),
            ready: ("False", "Stopped", "the VM is not running".into()),
            failure: previous_failure(previous),
            restart_count: previous.restart_count,
            start_failure: previous.start_failure.clone(),
            action: LauncherAction::None,
            events: Vec::new(),
            requeue_after: None,
            consume_request: false,
            release: false,
        }
    }

    fn decide(mut self) -> Plan {
        let obs = self.obs;
        self.settle_vanished();
        if obs.deleting {
            self.delete_vm();
        } else if obs.node == NodeHealth::Lost && obs.launcher.node().is_some() {
            self.node_lost();
        } else {
            let desire = self.desire();
            match desire {
                Desire::Run { automatic } => self.run(automatic),
                Desire::Stop => self.stop(),
                Desire::Leave => self.leave(),
            }
        }
        self.finish()
    }

    /// A launcher that is gone while the status still has it pending or running was not stopped by this handler
    /// (stops show `Stopping` first): it vanished (evicted, deleted by someone, its node removed). Its run ended as
    /// its node saw it end, or else as a failure.
    fn settle_vanished(&mut self) {
        let previous = self.obs.status;
        let active = matches!(
            previous.phase,
            Some(Phase::Pending | Phase::Scheduling | Phase::Scheduled | Phase::Running)
        );
        if self.obs.launcher != Launcher::Absent || !active {
            return;
        }
        if matches!(
            previous.printable_status,
            Some(PrintableStatus::Stopping | PrintableStatus::Terminating)
        ) {
            self.phase = Some(Phase::Succeeded);
            return;
        }
        match self.report.and_then(report_exit) {
            Some(exit) => self.ended(&exit),
            None => {
                self.phase = Some(Phase::Failed);
                let message = "the launcher disappeared while the VM ran".to_owned();
                self.event(EventKind::Warning, "LauncherVanished", message.clone());
                self.failure = Some(("LauncherVanished", message));
            }
        }
        if self.phase == Some(Phase::Failed) {
            self.count_failure(None, None, self.obs.now);
        }
    }

    fn desire(&mut self) -> Desire {
        let obs = self.obs;
        let request = obs.request.as_ref();
        if obs.run_strategy != RunStrategy::Manual
            && let Some(request) = request
        {
            self.consume_request = true;
            self.event(
                EventKind::Warning,
                "RunRequestIgnored",
                format!(
                    "run request {} ignored: runStrategy {:?} decides when this VM runs; use runStrategy Manual",
                    request_name(request),
                    obs.run_strategy
                ),
            );
        }
        let ended_cleanly = match &obs.launcher {
            Launcher::Ended { exit, .. } => !exit.failed(),
            Launcher::Absent => self.phase == Some(Phase::Succeeded),
            _ => false,
        };
        match obs.run_strategy {
            RunStrategy::Always => Desire::Run { automatic: true },
            RunStrategy::RerunOnFailure if ended_cleanly => Desire::Leave,
            RunStrategy::RerunOnFailure => Desire::Run { automatic: true },
            RunStrategy::Once if obs.launcher == Launcher::Absent && self.phase.is_none() => {
                Desire::Run { automatic: false }
            }
            RunStrategy::Once => Desire::Leave,
            RunStrategy::Halted => Desire::Stop,
            RunStrategy::Manual => match request {
                Some(RunRequest::Start) => Desire::Run { automatic: false },
                Some(RunRequest::Stop) => Desire::Stop,
                Some(RunRequest::Invalid(value)) => {
                    self.consume_request = true;
                    self.event(
                        EventKind::Warning,
                        "RunRequestInvalid",
                        format!("run request {value:?} is neither start nor stop"),
                    );
                    Desire::Leave
                }
                None => Desire::Leave,
            },
        }
    }

    fn run(&mut self, automatic: bool) {
        let obs = self.obs;
        let manual_start = obs.run_strategy == RunStrategy::Manual;
        match &obs.launcher {
            Launcher::Absent => self.start(automatic),
            Launcher::Pending { .. } | Launcher::Running { .. } => {
                self.consume_request |= manual_start;
                self.track_live();
            }
            Launcher::Ended {
                id,
                started,
                finished,
                exit,
                ..
            } => {
                self.ended(exit);
                if exit.failed() && automatic {
                    self.count_failure(Some(id), *started, *finished);
                }
                // The finished launcher makes way for the next; its logs go with it.
                self.action = LauncherAction::Delete;
                self.printable = if exit.failed() && automatic {
                    PrintableStatus::CrashLoopBackOff
                } else {
                    PrintableStatus::Starting
                };
                self.requeue_after = self.backoff_left();
            }
            Launcher::Terminating { .. } => {
                if self.printable != PrintableStatus::CrashLoopBackOff {
                    self.printable = PrintableStatus::Stopping;
                }
                self.ready = ("False", "Stopping", "the launcher is stopping".into());
            }
        }
    }

    /// Starts a launcher, unless the spec cannot run or the back-off says to wait.
    fn start(&mut self, automatic: bool) {
        let obs = self.obs;
        if let Some(problem) = &obs.spec_error {
            if self.failure.as_ref().is_none_or(|(reason, _)| *reason != "InvalidSpec") {
                self.event(EventKind::Warning, "InvalidSpec", problem.clone());
            }
            self.failure = Some(("InvalidSpec", problem.clone()));
            // KubeVirt's printable status for a VM that cannot be placed anywhere as it is: no node runs this spec.
            self.printable = PrintableStatus::ErrorUnschedulable;
            self.ready = ("False", "InvalidSpec", "the VM's spec cannot run".into());
            return;
        }
        if automatic && let Some(wait) = self.backoff_left() {
            self.printable = PrintableStatus::CrashLoopBackOff;
            self.ready = (
                "False",
                "CrashLoopBackOff",
                format!("the VM failed; next start in {}s", wait.as_secs()),
            );
            self.requeue_after = Some(wait);
            return;
        }
        if let Some(missing) = &self.obstacles.missing_claim {
            // The phase stays: no launcher was made. A Manual start request stays too, and acts once the claim is
            // there.
            let message = format!(
                "volume {:?}: the persistent volume claim {:?} does not exist; the VM starts once it does",
                missing.volume, missing.claim
            );
            if self
                .failure
                .as_ref()
                .is_none_or(|(reason, _)| *reason != CLAIM_NOT_FOUND)
            {
                self.event(EventKind::Warning, CLAIM_NOT_FOUND, message.clone());
            }
            self.failure = Some((CLAIM_NOT_FOUND, message.clone()));
            self.printable = PrintableStatus::ErrorPvcNotFound;
            self.ready = ("False", CLAIM_NOT_FOUND, message);
            self.requeue_after = Some(CLAIM_RECHECK);
            return;
        }
        let restart = matches!(self.phase, Some(Phase::Succeeded | Phase::Failed));
        if automatic && restart {
            self.restart_count = self.restart_count.saturating_add(1);
            self.event(
                EventKind::Normal,
                "Restarting",
                format!("starting the VM again (restart {})", self.restart_count),
            );
        } else {
            self.event(EventKind::Normal, "Starting", "starting the VM".into());
        }
        if !automatic {
            // A person's start is not part of a crash loop.
            self.start_failure = None;
        }
        self.consume_request = obs.run_strategy == RunStrategy::Manual;
        self.action = LauncherAction::Create;
        self.phase = Some(Phase::Pending);
        self.printable = PrintableStatus::Starting;
        self.failure = None;
        self.ready = ("False", "Starting", "the launcher is starting".into());
    }

    /// The status of a launcher that is pending or running.
    fn track_live(&mut self) {
        let obs = self.obs;
        self.failure = None;
        match &obs.launcher {
            Launcher::Pending {
                node, unschedulable, ..
            } => {
                self.phase = Some(if node.is_some() {
                    Phase::Scheduled
                } else {
                    Phase::Scheduling
                });
                if let Some(why) = unschedulable {
                    self.printable = PrintableStatus::ErrorUnschedulable;
                    self.ready = ("False", "Unschedulable", why.clone());
                } else if let Some(pull) = &self.obstacles.image_pull {
                    let (printable, reason) = if pull.backing_off {
                        (PrintableStatus::ImagePullBackOff, "ImagePullBackOff")
                    } else {
                        (PrintableStatus::ErrImagePull, "ErrImagePull")
                    };
                    self.printable = printable;
                    self.ready = ("False", reason, pull.message.clone());
                } else {
                    self.printable = PrintableStatus::Starting;
                    self.ready = ("False", "Starting", "the launcher is starting".into());
                }
            }
            Launcher::Running { since, .. } => {
                self.track_guest();
                if self.start_failure.is_some() {
                    let ran = duration_between(*since, obs.now);
                    if ran >= BACKOFF_RESET_AFTER {
                        self.start_failure = None;
                    } else {
                        self.requeue_after = Some(BACKOFF_RESET_AFTER - ran);
                    }
                }
            }
            _ => {}
        }
    }

    /// The status of a running launcher's guest, from its node's report: running only once the launcher says so.
    fn track_guest(&mut self) {
        let report = self.report;
        let said = |default: &str| report.and_then(|r| r.message.clone()).unwrap_or_else(|| default.into());
        let state = report.map_or(ReportedState::Starting, |r| r.state);
        let (phase, printable, ready) = match state {
            ReportedState::Starting => (
                Phase::Scheduled,
                PrintableStatus::Starting,
                ("False", "Starting", "the launcher is starting the VM".to_owned()),
            ),
            ReportedState::Running => (
                Phase::Running,
                PrintableStatus::Running,
                match &self.obs.readiness {
                    Readiness::Unprobed | Readiness::Ready => ("True", "Running", said("the guest is running")),
                    Readiness::NotReady(why) => ("False", "GuestNotReady", why.clone()),
                },
            ),
            ReportedState::Paused => (
                Phase::Running,
                PrintableStatus::Paused,
                ("False", "Paused", said("the guest is paused")),
            ),
            ReportedState::ShuttingDown => (
                Phase::Running,
                PrintableStatus::Stopping,
                ("False", "ShuttingDown", said("the guest is shutting down")),
            ),
            // The guest is over and the launcher exits next; its Pod will say how it ended.
            ReportedState::Stopped | ReportedState::Failed | ReportedState::Exited => {
                self.printable = PrintableStatus::Stopping;
                self.ready = (
                    "False",
                    "Stopping",
                    "the guest has ended; its launcher is exiting".into(),
                );
                return;
            }
            // Nobody can vouch for the guest: what was known of it stands, but not its readiness.
            ReportedState::Unreachable | ReportedState::Lost => {
                self.ready = ("Unknown", "LauncherUnreachable", said("the launcher does not answer"));
                return;
            }
        };
        if phase == Phase::Running && self.phase != Some(Phase::Running) {
            self.event(EventKind::Normal, "Started", "the VM is running".into());
        }
        self.phase = Some(phase);
        self.printable = printable;
        self.ready = ready;
    }

    /// Records how a run ended (its event once: the phase says whether it was seen already).
    fn ended(&mut self, exit: &Exit) {
        match exit {
            Exit::Succeeded => {
                if self.phase != Some(Phase::Succeeded) {
                    self.event(EventKind::Normal, "Succeeded", "the guest shut down".into());
                }
                self.phase = Some(Phase::Succeeded);
                self.failure = None;
                self.ready = ("False", "Succeeded", "the guest shut down".into());
            }
            Exit::Failed { .. } | Exit::Lost { .. } => {
                let (why, message) = failure_of(exit);
                if self.phase != Some(Phase::Failed) {
                    self.event(EventKind::Warning, why, message.clone());
                }
                self.phase = Some(Phase::Failed);
                self.ready = ("False", why, message.clone());
                self.failure = Some((why, message));
            }
        }
        self.printable = PrintableStatus::Stopped;
    }

    /// Counts a failed run toward the back-off, once per launcher.
    fn count_failure(&mut self, id: Option<&String>, started: Option<Timestamp>, finished: Timestamp) {
        let previous = self.start_failure.clone().unwrap_or_default();
        if id.is_some() && previous.last_failed_launcher.as_ref() == id {
            return;
        }
        let ran_long = started.is_some_and(|s| duration_between(s, finished) >= BACKOFF_RESET_AFTER);
        let count = if ran_long {
            1
        } else {
            previous.consecutive_fail_count.saturating_add(1)
        };
        let retry_after = finished
            .checked_add(SignedDuration::try_from(backoff(count)).unwrap_or(SignedDuration::MAX))
            .unwrap_or(Timestamp::MAX);
        self.start_failure = Some(StartFailure {
            consecutive_fail_count: count,
            last_failed_launcher: id.cloned(),
            retry_after_timestamp: Some(Time(retry_after)),
        });
    }

    /// How long the back-off still holds the next automatic start, if it does.
    fn backoff_left(&self) -> Option<Duration> {
        let until = self.start_failure.as_ref()?.retry_after_timestamp.as_ref()?.0;
        let left = duration_between(self.obs.now, until);
        (!left.is_zero()).then_some(left)
    }

    fn stop(&mut self) {
        let obs = self.obs;
        self.start_failure = None;
        self.ready = ("False", "Stopped", "the VM is not running".into());
        match &obs.launcher {
            Launcher::Absent => {
                self.consume_request |= obs.request == Some(RunRequest::Stop);
                self.phase = None;
                self.failure = None;
                self.printable = PrintableStatus::Stopped;
            }
            Launcher::Terminating { .. } => {
                self.consume_request |= obs.request == Some(RunRequest::Stop);
                self.printable = PrintableStatus::Stopping;
                self.ready = ("False", "Stopping", "the launcher is stopping".into());
            }
            Launcher::Pending { .. } | Launcher::Running { .. } | Launcher::Ended { .. } => {
                self.consume_request |= obs.request == Some(RunRequest::Stop);
                if let Launcher::Ended { exit, .. } = &obs.launcher {
                    self.ended(exit);
                } else {
                    self.event(EventKind::Normal, "Stopping", "stopping the VM".into());
                }
                self.action = LauncherAction::Delete;
                self.printable = PrintableStatus::Stopping;
                self.ready = ("False", "Stopping", "the launcher is stopping".into());
            }
        }
    }

    fn leave(&mut self) {
        let obs = self.obs;
        match &obs.launcher {
            Launcher::Absent => {
                self.printable = PrintableStatus::Stopped;
                if let Some(Phase::Succeeded) = self.phase {
                    self.ready = ("False", "Succeeded", "the guest shut down".into());
                }
            }
            Launcher::Pending { .. } | Launcher::Running { .. } => self.track_live(),
            Launcher::Ended { exit, .. } => self.ended(exit),
            Launcher::Terminating { .. } => {
                self.printable = PrintableStatus::Stopping;
                self.ready = ("False", "Stopping", "the launcher is stopping".into());
            }
        }
    }

    fn delete_vm(&mut self) {
        let obs = self.obs;
        self.printable = PrintableStatus::Terminating;
        self.ready = ("False", "Terminating", "the VM is being deleted".into());
        match &obs.launcher {
            Launcher::Absent => self.release = true,
            Launcher::Terminating { .. } => {}
            _ => {
                self.event(
                    EventKind::Normal,
                    "Stopping",
                    "the VM is being deleted: stopping its launcher".into(),
                );
                self.action = LauncherAction::Delete;
            }
        }
    }

    /// The launcher's node stopped answering: what it last reported cannot be trusted, so the VM is marked failed.
    /// Its launcher is left alone: the node may only be cut off, with the guest still running (or its node role being
    /// upgraded); if the node comes back, the status follows the launcher again. The run strategy acts once the
    /// launcher is gone (the node removed, or the launcher deleted by force).
    fn node_lost(&mut self) {
        let message = format!(
            "node {} stopped answering; the VM's state is unknown",
            self.obs.launcher.node().unwrap_or_default()
        );
        if self
            .failure
            .as_ref()
            .is_none_or(|(reason, _)| *reason != "NodeUnresponsive")
        {
            self.event(EventKind::Warning, "NodeUnresponsive", message.clone());
        }
        self.phase = Some(Phase::Failed);
        self.printable = PrintableStatus::Unknown;
        self.ready = ("False", "NodeUnresponsive", message.clone());
        self.failure = Some(("NodeUnresponsive", message));
        self.requeue_after = Some(NODE_LOST_RECHECK);
    }

    fn event(&mut self, kind: EventKind, reason: &'static str, message: String) {
        self.events.push(Event { kind, reason, message });
    }

    fn finish(self) -> Plan {
        let obs = self.obs;
        let previous = obs.status;
        let mut conditions = vec![condition(
            previous,
            ConditionType::Ready,
            self.ready.0,
            self.ready.1,
            &self.ready.2,
            obs.now,
        )];
        if let Some((reason, message)) = &self.failure {
            conditions.push(condition(
                previous,
                ConditionType::Failure,
                "True",
                reason,
                message,
                obs.now,
            ));
        }
        let mut transitions = previous.phase_transition_timestamps.clone();
        if let Some(phase) = self.phase
            && previous.phase != Some(phase)
        {
            transitions.retain(|t| t.phase != phase);
            transitions.push(PhaseTransition {
                phase,
                phase_transition_timestamp: Time(obs.now),
            });
        }
        let status = VirtualMachineStatus {
            phase: self.phase,
            printable_status: Some(self.printable),
            conditions,
            node_name: obs.launcher.node().map(str::to_owned),
            restart_count: self.restart_count,
            start_failure: self.start_failure,
            phase_transition_timestamps: transitions,
            ..VirtualMachineStatus::default()
        };
        Plan {
            action: self.action,
            status,
            events: self.events,
            requeue_after: self.requeue_after,
            consume_request: self.consume_request,
            release: self.release,
        }
    }
}

fn previous_failure(status: &VirtualMachineStatus) -> Option<(&'static str, String)> {
    let failure = status
        .conditions
        .iter()
        .find(|c| c.condition_type == ConditionType::Failure && c.status == "True")?;
    let reason = FAILURE_REASONS
        .iter()
        .find(|r| failure.reason.as_deref() == Some(**r))
        .copied()?;
    Some((reason, failure.message.clone().unwrap_or_default()))
}

/// The Event of a change of printable status that no other Event of the plan tells: every state change of a VM is
/// an Event (on Kubernetes) or a log line (standalone).
pub fn status_change(previous: &VirtualMachineStatus, plan: &Plan) -> Option<Event> {
    let (before, after) = (previous.printable_status, plan.status.printable_status?);
    if before == Some(after) || !plan.events.is_empty() {
        return None;
    }
    let was = before.map_or_else(|| "new".to_owned(), |b| format!("{b:?}"));
    Some(Event {
        kind: match after {
            PrintableStatus::CrashLoopBackOff
            | PrintableStatus::ErrorUnschedulable
            | PrintableStatus::ErrImagePull
            | PrintableStatus::ImagePullBackOff
            | PrintableStatus::ErrorPvcNotFound
            | PrintableStatus::Unknown => EventKind::Warning,
            _ => EventKind::Normal,
        },
        reason: "StatusChanged",
        message: format!("the VM is {after:?} (was {was})"),
    })
}

/// Whether an event's reason is a launcher's run that failed (as opposed to a spec or a claim that keeps it from
/// starting).
pub fn is_launcher_failure(reason: &str) -> bool {
    matches!(
        reason,
        "LauncherFailed" | "GuestDestroyed" | "GuestCrashed" | "LauncherKilled" | "LauncherVanished" | "LauncherLost"
    )
}

/// Every reason the Failure condition can carry.
const FAILURE_REASONS: &[&str] = &[
    "LauncherFailed",
    "GuestDestroyed",
    "GuestCrashed",
    "LauncherKilled",
    "LauncherVanished",
    "LauncherLost",
    "InvalidSpec",
    "NodeUnresponsive",
    CLAIM_NOT_FOUND,
];

/// The Failure reason and message for how a launcher's run failed: its exit code (docs/launcher.md), or its loss.
fn failure_of(exit: &Exit) -> (&'static str, String) {
    let (code, reason) = match exit {
        Exit::Succeeded => return ("Succeeded", "the guest shut down".into()),
        Exit::Lost { message } => return ("LauncherLost", format!("the launcher was lost: {message}")),
        Exit::Failed { code, reason } => (*code, reason.as_deref()),
    };
    let detail = reason.map(|r| format!(" ({r})")).unwrap_or_default();
    match code {
        Some(1) => ("LauncherFailed", format!("the launcher could not run the VM{detail}")),
        Some(3) => ("GuestDestroyed", format!("the guest was destroyed{detail}")),
        Some(4) => ("GuestCrashed", format!("the guest crashed or QEMU died{detail}")),
        Some(code) => (
            "LauncherFailed",
            format!("the launcher exited with code {code}{detail}"),
        ),
        None => ("LauncherKilled", format!("the launcher was killed{detail}")),
    }
}

fn request_name(request: &RunRequest) -> String {
    match request {
        RunRequest::Start => "start".into(),
        RunRequest::Stop => "stop".into(),
        RunRequest::Invalid(value) => format!("{value:?}"),
    }
}

/// A condition, keeping its last transition time when its status did not change.
fn condition(
    previous: &VirtualMachineStatus,
    condition_type: ConditionType,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> Condition {
    let last_transition_time = previous
        .conditions
        .iter()
        .find(|c| c.condition_type == condition_type && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        condition_type,
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: Some(last_transition_time),
    }
}

/// `to - from`, or zero when `to` is not later.
fn duration_between(from: Timestamp, to: Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(T0 + seconds).unwrap()
    }

    /// A status following the launcher pod `l1`, whose node reports its guest running.
    fn status(phase: Option<Phase>, printable: Option<PrintableStatus>) -> VirtualMachineStatus {
        VirtualMachineStatus {
            phase,
            printable_status: printable,
            launcher_pod: Some("l1".into()),
            launcher: Some(report(ReportedState::Running)),
            ..VirtualMachineStatus::default()
        }
    }

    fn report(state: ReportedState) -> LauncherReport {
        LauncherReport {
            pod: "l1".into(),
            node: "n1".into(),
            state,
            guest_exit: None,
            exit_code: None,
            message: None,
        }
    }

    /// The status as read after the controller applied `plan`'s over `previous`, still following `l1`.
    fn as_read(plan: &Plan, previous: &VirtualMachineStatus) -> VirtualMachineStatus {
        let mut applied = plan.status.clone();
        applied.launcher_pod = Some("l1".into());
        let mut read = previous.clone();
        crate::vm_status::write_controller_part(&mut read, &applied);
        read
    }

    /// `status` with the node's report on `l1` replaced.
    fn reporting(mut status: VirtualMachineStatus, report: LauncherReport) -> VirtualMachineStatus {
        status.launcher = Some(report);
        status
    }

    fn pending(node: Option<&str>) -> Launcher {
        Launcher::Pending {
            id: "l1".into(),
            node: node.map(Into::into),
            unschedulable: None,
        }
    }

    fn running(since: i64) -> Launcher {
        Launcher::Running {
            id: "l1".into(),
            node: Some("n1".into()),
            since: at(since),
        }
    }

    fn ended(exit: Exit) -> Launcher {
        Launcher::Ended {
            id: "l1".into(),
            node: Some("n1".into()),
            started: Some(at(0)),
            finished: at(5),
            exit,
        }
    }

    fn failed(code: i32) -> Launcher {
        ended(Exit::Failed {
            code: Some(code),
            reason: None,
        })
    }

    fn terminating() -> Launcher {
        Launcher::Terminating {
            id: "l1".into(),
            node: Some("n1".into()),
        }
    }

    fn observe(strategy: RunStrategy, status: &VirtualMachineStatus, launcher: Launcher, now: i64) -> Observation<'_> {
        Observation {
            run_strategy: strategy,
            request: None,
            deleting: false,
            spec_error: None,
            status,
            launcher,
            readiness: Readiness::Unprobed,
            node: NodeHealth::Alive,
            now: at(now),
        }
    }

    fn reasons(plan: &Plan) -> Vec<&'static str> {
        plan.events.iter().map(|e| e.reason).collect()
    }

    fn condition_of(plan: &Plan, kind: ConditionType) -> Option<(&str, &str)> {
        plan.status
            .conditions
            .iter()
            .find(|c| c.condition_type == kind)
            .map(|c| (c.status.as_str(), c.reason.as_deref().unwrap_or_default()))
    }

    use LauncherAction::{Create, Delete, None as Nothing};
    use Phase::{Failed, Pending, Running, Scheduled, Scheduling, Succeeded};
    use PrintableStatus as P;
    use RunStrategy::{Always, Halted, Manual, Once, RerunOnFailure};

    /// One row: strategy, previous phase and printable status, the launcher → action, phase, printable status.
    struct Row {
        strategy: RunStrategy,
        phase: Option<Phase>,
        printable: Option<PrintableStatus>,
        launcher: Launcher,
        action: LauncherAction,
        new_phase: Option<Phase>,
        new_printable: PrintableStatus,
    }

    fn row(
        strategy: RunStrategy,
        (phase, printable): (Option<Phase>, Option<PrintableStatus>),
        launcher: Launcher,
        action: LauncherAction,
        new_phase: Option<Phase>,
        new_printable: PrintableStatus,
    ) -> Row {
        Row {
            strategy,
            phase,
            printable,
            launcher,
            action,
            new_phase,
            new_printable,
        }
    }

    #[test]
    fn every_strategy_and_launcher_state() {
        let new = (None, None);
        let was_running = (Some(Running), Some(P::Running));
        let was_stopping = (Some(Running), Some(P::Stopping));
        let was_done = (Some(Succeeded), Some(P::Stopped));
        let was_failed = (Some(Failed), Some(P::Stopped));
        let rows = [
            // Always: start, track, restart after any end.
            row(Always, new, Launcher::Absent, Create, Some(Pending), P::Starting),
            row(Always, new, pending(None), Nothing, Some(Scheduling), P::Starting),
            row(Always, new, pending(Some("n1")), Nothing, Some(Scheduled), P::Starting),
            row(Always, new, running(0), Nothing, Some(Running), P::Running),
            row(
                Always,
                was_running,
                ended(Exit::Succeeded),
                Delete,
                Some(Succeeded),
                P::Starting,
            ),
            row(
                Always,
                was_running,
                failed(4),
                Delete,
                Some(Failed),
                P::CrashLoopBackOff,
            ),
            row(Always, was_done, Launcher::Absent, Create, Some(Pending), P::Starting),
            row(Always, was_running, terminating(), Nothing, Some(Running), P::Stopping),
            row(
                Always,
                was_stopping,
                Launcher::Absent,
                Create,
                Some(Pending),
                P::Starting,
            ),
            // RerunOnFailure: a clean end is final, a failure is not.
            row(
                RerunOnFailure,
                new,
                Launcher::Absent,
                Create,
                Some(Pending),
                P::Starting,
            ),
            row(
                RerunOnFailure,
                was_running,
                ended(Exit::Succeeded),
                Nothing,
                Some(Succeeded),
                P::Stopped,
            ),
            row(
                RerunOnFailure,
                was_done,
                Launcher::Absent,
                Nothing,
                Some(Succeeded),
                P::Stopped,
            ),
            row(
                RerunOnFailure,
                was_running,
                failed(3),
                Delete,
                Some(Failed),
                P::CrashLoopBackOff,
            ),
            // Once: one run, whatever its end.
            row(Once, new, Launcher::Absent, Create, Some(Pending), P::Starting),
            row(Once, new, running(0), Nothing, Some(Running), P::Running),
            row(
                Once,
                was_running,
                ended(Exit::Succeeded),
                Nothing,
                Some(Succeeded),
                P::Stopped,
            ),
            row(Once, was_running, failed(4), Nothing, Some(Failed), P::Stopped),
            row(Once, was_done, Launcher::Absent, Nothing, Some(Succeeded), P::Stopped),
            row(Once, was_failed, Launcher::Absent, Nothing, Some(Failed), P::Stopped),
            row(Once, was_running, Launcher::Absent, Nothing, Some(Failed), P::Stopped),
            // Manual, with no request: nothing starts or stops by itself.
            row(Manual, new, Launcher::Absent, Nothing, None, P::Stopped),
            row(Manual, new, running(0), Nothing, Some(Running), P::Running),
            row(
                Manual,
                was_running,
                ended(Exit::Succeeded),
                Nothing,
                Some(Succeeded),
                P::Stopped,
            ),
            row(Manual, was_running, failed(1), Nothing, Some(Failed), P::Stopped),
            row(Manual, was_done, Launcher::Absent, Nothing, Some(Succeeded), P::Stopped),
            // Halted: stop whatever there is, then forget the last run.
            row(Halted, new, Launcher::Absent, Nothing, None, P::Stopped),
            row(Halted, was_running, running(0), Delete, Some(Running), P::Stopping),
            row(Halted, new, pending(None), Delete, None, P::Stopping),
            row(
                Halted,
                was_running,
                ended(Exit::Succeeded),
                Delete,
                Some(Succeeded),
                P::Stopping,
            ),
            row(Halted, was_stopping, terminating(), Nothing, Some(Running), P::Stopping),
            row(Halted, was_stopping, Launcher::Absent, Nothing, None, P::Stopped),
            row(Halted, was_failed, Launcher::Absent, Nothing, None, P::Stopped),
        ];
        for (i, r) in rows.into_iter().enumerate() {
            let previous = status(r.phase, r.printable);
            let plan = plan(&observe(r.strategy, &previous, r.launcher.clone(), 100));
            let got = (plan.action, plan.status.phase, plan.status.printable_status);
            let want = (r.action, r.new_phase, Some(r.new_printable));
            assert_eq!(got, want, "row {i}: {:?} {:?} {:?}", r.strategy, r.phase, r.launcher);
            assert!(!plan.release && !plan.consume_request, "row {i}");
        }
    }

    #[test]
    fn ready_follows_the_running_launcher() {
        let previous = status(None, None);
        let plan = plan(&observe(Always, &previous, running(0), 5));
        assert_eq!(condition_of(&plan, ConditionType::Ready), Some(("True", "Running")));
        assert_eq!(condition_of(&plan, ConditionType::Failure), None);
        assert_eq!(plan.status.node_name.as_deref(), Some("n1"));
        assert_eq!(reasons(&plan), ["Started"]);
        // Seen again: the same status, the transition time kept, no second event.
        let read = as_read(&plan, &previous);
        let again = super::plan(&observe(Always, &read, running(0), 50));
        assert_eq!(again.status, plan.status);
        assert!(again.events.is_empty());
    }

    #[test]
    fn a_running_guest_is_ready_only_while_its_readiness_probe_passes() {
        let previous = status(None, None);
        let mut obs = observe(Always, &previous, running(0), 5);
        obs.readiness = Readiness::NotReady("the readiness probe failed: connection refused".into());
        let not_ready = plan(&obs);
        assert_eq!(
            condition_of(&not_ready, ConditionType::Ready),
            Some(("False", "GuestNotReady"))
        );
        // Running all the same: readiness is not the guest's state.
        assert_eq!(not_ready.status.phase, Some(Running));
        assert_eq!(not_ready.status.printable_status, Some(P::Running));
        let read = as_read(&not_ready, &previous);
        let mut obs = observe(Always, &read, running(0), 9);
        obs.readiness = Readiness::Ready;
        let ready = plan(&obs);
        assert_eq!(condition_of(&ready, ConditionType::Ready), Some(("True", "Running")));
        assert_eq!(ready.action, LauncherAction::None);
    }

    #[test]
    fn failures_back_off_doubling_up_to_the_cap() {
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(2), Duration::from_secs(20));
        assert_eq!(backoff(5), Duration::from_secs(160));
        assert_eq!(backoff(6), Duration::from_secs(300));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(300));
    }

    /// A guest that crashes at once, again and again, under Always: each failure waits twice as long.
    #[test]
    fn a_crash_loop_waits_longer_each_time() {
        let mut current = status(Some(Running), Some(P::Running));
        let mut now = 0;
        for (n, wait) in [(1, 10), (2, 20), (3, 40), (4, 80), (5, 160), (6, 300), (7, 300)] {
            let id = format!("l{n}");
            let launcher = Launcher::Ended {
                id: id.clone(),
                node: Some("n1".into()),
                started: Some(at(now)),
                finished: at(now + 2),
                exit: Exit::Failed {
                    code: Some(4),
                    reason: None,
                },
            };
            let seen = plan(&observe(Always, &current, launcher.clone(), now + 3));
            assert_eq!(seen.action, Delete);
            let failure = seen.status.start_failure.clone().unwrap();
            assert_eq!(failure.consecutive_fail_count, n);
            assert_eq!(failure.last_failed_launcher.as_deref(), Some(id.as_str()));
            assert_eq!(failure.retry_after_timestamp, Some(Time(at(now + 2 + wait))));
            assert_eq!(seen.requeue_after, Some(Duration::from_secs(wait as u64 - 1)));
            assert_eq!(reasons(&seen), ["GuestCrashed"]);
            assert_eq!(
                condition_of(&seen, ConditionType::Failure),
                Some(("True", "GuestCrashed"))
            );

            // Seen again before the launcher is gone: counted once.
            let twice = plan(&observe(Always, &seen.status, launcher, now + 4));
            assert_eq!(twice.status.start_failure, seen.status.start_failure);
            assert!(twice.events.is_empty());

            // Gone, but the back-off holds.
            let waiting = plan(&observe(Always, &twice.status, Launcher::Absent, now + 2 + wait - 1));
            assert_eq!(waiting.action, Nothing);
            assert_eq!(waiting.status.printable_status, Some(P::CrashLoopBackOff));
            assert_eq!(waiting.requeue_after, Some(Duration::from_secs(1)));

            // The back-off is over: restart, counted.
            now += 2 + wait;
            let restart = plan(&observe(Always, &waiting.status, Launcher::Absent, now));
            assert_eq!(restart.action, Create);
            assert_eq!(restart.status.restart_count, n);
            assert_eq!(reasons(&restart), ["Restarting"]);
            assert_eq!(condition_of(&restart, ConditionType::Failure), None);
            current = plan(&observe(Always, &restart.status, running(now), now)).status;
        }
    }

    #[test]
    fn a_long_run_ends_the_crash_loop() {
        let mut previous = status(Some(Running), Some(P::Running));
        previous.start_failure = Some(StartFailure {
            consecutive_fail_count: 5,
            last_failed_launcher: Some("l0".into()),
            retry_after_timestamp: Some(Time(at(0))),
        });
        // Running, not long enough yet: look again when it will be.
        let young = plan(&observe(Always, &previous, running(0), 100));
        assert_eq!(young.status.start_failure, previous.start_failure);
        assert_eq!(
            young.requeue_after,
            Some(BACKOFF_RESET_AFTER - Duration::from_secs(100))
        );
        // Long enough: forgotten.
        let old = plan(&observe(Always, &previous, running(0), 600));
        assert_eq!(old.status.start_failure, None);
        assert_eq!(old.requeue_after, None);
        // A failure after a long run (not seen while running) counts as the first of a new loop.
        let late = Launcher::Ended {
            id: "l1".into(),
            node: None,
            started: Some(at(0)),
            finished: at(700),
            exit: Exit::Failed {
                code: Some(4),
                reason: None,
            },
        };
        let failed = plan(&observe(Always, &previous, late, 701));
        let failure = failed.status.start_failure.unwrap();
        assert_eq!(failure.consecutive_fail_count, 1);
        assert_eq!(failure.retry_after_timestamp, Some(Time(at(710))));
    }

    #[test]
    fn a_clean_end_under_always_restarts_at_once() {
        let previous = status(Some(Running), Some(P::Running));
        let ended = plan(&observe(Always, &previous, ended(Exit::Succeeded), 10));
        assert_eq!((ended.action, ended.requeue_after), (Delete, None));
        assert_eq!(ended.status.start_failure, None);
        assert_eq!(reasons(&ended), ["Succeeded"]);
        let restart = plan(&observe(Always, &ended.status, Launcher::Absent, 11));
        assert_eq!((restart.action, restart.status.restart_count), (Create, 1));
    }

    #[test]
    fn exit_codes_name_the_failure() {
        for (code, reason) in [
            (Some(1), "LauncherFailed"),
            (Some(3), "GuestDestroyed"),
            (Some(4), "GuestCrashed"),
            (Some(137), "LauncherFailed"),
            (None, "LauncherKilled"),
        ] {
            let previous = status(Some(Running), Some(P::Running));
            let launcher = ended(Exit::Failed {
                code,
                reason: Some("OOMKilled".into()),
            });
            let plan = plan(&observe(Once, &previous, launcher, 10));
            assert_eq!(condition_of(&plan, ConditionType::Failure), Some(("True", reason)));
            assert_eq!(condition_of(&plan, ConditionType::Ready), Some(("False", reason)));
            assert!(plan.events[0].message.contains("OOMKilled"), "{:?}", plan.events);
            assert_eq!(plan.events[0].kind, EventKind::Warning);
        }
    }

    #[test]
    fn a_vanished_launcher_is_a_failure() {
        let previous = status(Some(Running), Some(P::Running));
        let plan = plan(&observe(Always, &previous, Launcher::Absent, 10));
        assert_eq!(plan.action, Nothing);
        assert_eq!(plan.status.phase, Some(Failed));
        assert_eq!(plan.status.printable_status, Some(P::CrashLoopBackOff));
        assert_eq!(plan.status.start_failure.as_ref().unwrap().consecutive_fail_count, 1);
        assert_eq!(plan.requeue_after, Some(BACKOFF_INITIAL));
        assert_eq!(reasons(&plan), ["LauncherVanished"]);
    }

    #[test]
    fn manual_start_and_stop_requests() {
        let stopped = status(Some(Succeeded), Some(P::Stopped));
        let mut obs = observe(Manual, &stopped, Launcher::Absent, 10);
        obs.request = Some(RunRequest::Start);
        let start = plan(&obs);
        assert_eq!((start.action, start.consume_request), (Create, true));
        assert_eq!(start.status.restart_count, 0, "a person's start is no restart");

        // The request still there while the launcher starts: consumed, nothing more.
        obs.launcher = pending(None);
        let again = plan(&obs);
        assert_eq!((again.action, again.consume_request), (Nothing, true));

        // A start after an ended run removes that run's launcher first, and ignores any back-off.
        let mut failing = status(Some(Failed), Some(P::Stopped));
        failing.start_failure = Some(StartFailure {
            consecutive_fail_count: 3,
            last_failed_launcher: Some("l1".into()),
            retry_after_timestamp: Some(Time(at(1000))),
        });
        let mut obs = observe(Manual, &failing, failed(4), 10);
        obs.request = Some(RunRequest::Start);
        let clear = plan(&obs);
        assert_eq!((clear.action, clear.consume_request), (Delete, false));
        obs.launcher = Launcher::Absent;
        let start = plan(&obs);
        assert_eq!((start.action, start.consume_request), (Create, true));
        assert_eq!(start.status.start_failure, None);

        // Stop: delete, consumed; with nothing running, consumed at once.
        let running_status = status(Some(Running), Some(P::Running));
        let mut obs = observe(Manual, &running_status, running(0), 10);
        obs.request = Some(RunRequest::Stop);
        let stop = plan(&obs);
        assert_eq!((stop.action, stop.consume_request), (Delete, true));
        assert_eq!(reasons(&stop), ["Stopping"]);
        obs.launcher = Launcher::Absent;
        obs.status = &stopped;
        let stop = plan(&obs);
        assert_eq!((stop.action, stop.consume_request), (Nothing, true));
        assert_eq!(stop.status.phase, None);
    }

    #[test]
    fn requests_outside_manual_and_nonsense_are_dropped_with_a_warning() {
        let previous = VirtualMachineStatus::default();
        let mut obs = observe(Halted, &previous, Launcher::Absent, 10);
        obs.request = Some(RunRequest::Start);
        let ignored = plan(&obs);
        assert_eq!((ignored.action, ignored.consume_request), (Nothing, true));
        assert_eq!(reasons(&ignored), ["RunRequestIgnored"]);

        let mut obs = observe(Manual, &previous, Launcher::Absent, 10);
        obs.request = Some(RunRequest::parse("reboot"));
        let invalid = plan(&obs);
        assert_eq!((invalid.action, invalid.consume_request), (Nothing, true));
        assert_eq!(invalid.events[0].kind, EventKind::Warning);
        assert_eq!(reasons(&invalid), ["RunRequestInvalid"]);
        assert_eq!(RunRequest::parse(" stop\n"), RunRequest::Stop);
    }

    #[test]
    fn deleting_the_vm_stops_its_launcher_then_releases_it() {
        let previous = status(Some(Running), Some(P::Running));
        for (launcher, action, release) in [
            (running(0), Delete, false),
            (pending(None), Delete, false),
            (ended(Exit::Succeeded), Delete, false),
            (terminating(), Nothing, false),
            (Launcher::Absent, Nothing, true),
        ] {
            let mut obs = observe(Always, &previous, launcher.clone(), 10);
            obs.deleting = true;
            let plan = plan(&obs);
            assert_eq!((plan.action, plan.release), (action, release), "{launcher:?}");
            assert_eq!(plan.status.printable_status, Some(P::Terminating));
        }
    }

    fn missing_claim() -> Obstacles {
        Obstacles {
            missing_claim: Some(MissingClaim {
                volume: "data".into(),
                claim: "data-claim".into(),
            }),
            image_pull: None,
        }
    }

    /// A plan's Ready condition: status, reason, message.
    fn ready_of(plan: &Plan) -> (String, String, String) {
        let ready = plan
            .status
            .conditions
            .iter()
            .find(|c| c.condition_type == ConditionType::Ready)
            .unwrap();
        (
            ready.status.clone(),
            ready.reason.clone().unwrap(),
            ready.message.clone().unwrap(),
        )
    }

    #[test]
    fn a_missing_claim_holds_every_start_and_names_the_claim() {
        const MESSAGE: &str =
            "volume \"data\": the persistent volume claim \"data-claim\" does not exist; the VM starts once it does";
        let never_ran = VirtualMachineStatus::default();
        let succeeded = status(Some(Succeeded), Some(P::Stopped));
        // Strategy, request, previous status: each would make a launcher.
        let cases: [(RunStrategy, Option<RunRequest>, &VirtualMachineStatus); 5] = [
            (Always, None, &never_ran),
            (Always, None, &succeeded),
            (RerunOnFailure, None, &never_ran),
            (Once, None, &never_ran),
            (Manual, Some(RunRequest::Start), &succeeded),
        ];
        for (strategy, request, previous) in cases {
            let what = format!("{strategy:?} {request:?} after {:?}", previous.phase);
            let mut obs = observe(strategy, previous, Launcher::Absent, 10);
            obs.request = request;
            assert_eq!(plan(&obs).action, Create, "{what}: it would start");
            let held = plan_with(&obs, &missing_claim());
            assert_eq!(held.action, Nothing, "{what}");
            assert_eq!(held.status.phase, previous.phase, "{what}: no launcher, no new phase");
            assert_eq!(held.status.printable_status, Some(P::ErrorPvcNotFound), "{what}");
            assert_eq!(
                ready_of(&held),
                ("False".into(), "FailedPvcNotFound".into(), MESSAGE.into()),
                "{what}"
            );
            assert_eq!(
                condition_of(&held, ConditionType::Failure),
                Some(("True", "FailedPvcNotFound")),
                "{what}"
            );
            assert_eq!(reasons(&held), ["FailedPvcNotFound"], "{what}");
            assert_eq!(
                held.status.restart_count, previous.restart_count,
                "{what}: not a restart"
            );
            assert_eq!(
                held.requeue_after,
                Some(CLAIM_RECHECK),
                "{what}: claims are not watched"
            );
            assert!(!held.consume_request, "{what}: a start request waits for the claim");

            // Reported once; and once the claim is there, the VM starts and the failure goes.
            let read = as_read(&held, previous);
            obs.status = &read;
            let again = plan_with(&obs, &missing_claim());
            assert!(again.events.is_empty(), "{what}: reported once");
            assert_eq!(again.status, held.status, "{what}: nothing new to write");
            let started = plan(&obs);
            assert_eq!(started.action, Create, "{what}");
            assert_eq!(condition_of(&started, ConditionType::Failure), None, "{what}");
        }
        // A stop request, or a halted VM, is no start: nothing to hold.
        let halted = plan_with(&observe(Halted, &never_ran, Launcher::Absent, 10), &missing_claim());
        assert_eq!(halted.status.printable_status, Some(P::Stopped));
        assert!(halted.events.is_empty());
    }

    #[test]
    fn a_pending_launcher_whose_image_cannot_be_pulled_says_so() {
        let previous = status(Some(Scheduled), Some(P::Starting));
        let message = "Back-off pulling image \"registry.example/fedora:40\"";
        let cases = [
            (false, P::ErrImagePull, "ErrImagePull"),
            (true, P::ImagePullBackOff, "ImagePullBackOff"),
        ];
        for (backing_off, printable, reason) in cases {
            let obstacles = Obstacles {
                missing_claim: None,
                image_pull: Some(ImagePull {
                    backing_off,
                    message: message.into(),
                }),
            };
            let waiting = plan_with(&observe(Always, &previous, pending(Some("n1")), 10), &obstacles);
            assert_eq!(waiting.action, Nothing, "the kubelet keeps trying");
            assert_eq!(waiting.status.phase, Some(Scheduled));
            assert_eq!(waiting.status.printable_status, Some(printable));
            assert_eq!(ready_of(&waiting), ("False".into(), reason.into(), message.into()));
            assert_eq!(condition_of(&waiting, ConditionType::Failure), None, "not a failure");
            assert!(waiting.events.is_empty(), "the kubelet records its own");
        }
        // A launcher no node can take says that first: nothing is pulled before a node is found.
        let unschedulable = Launcher::Pending {
            id: "l1".into(),
            node: None,
            unschedulable: Some("0/3 nodes are available".into()),
        };
        let obstacles = Obstacles {
            missing_claim: None,
            image_pull: Some(ImagePull {
                backing_off: true,
                message: message.into(),
            }),
        };
        let plan = plan_with(&observe(Always, &previous, unschedulable, 10), &obstacles);
        assert_eq!(plan.status.printable_status, Some(P::ErrorUnschedulable));
    }

    /// A change of printable status that the plan tells in no Event of its own is one; one it tells is not told
    /// twice, and no change is none.
    #[test]
    fn every_change_of_state_is_an_event() {
        let previous = status(Some(Running), Some(P::Starting));
        let mut plan = plan(&observe(Always, &previous, running(0), 100));
        plan.status.printable_status = Some(P::Running);
        plan.events.clear();
        let event = status_change(&previous, &plan).unwrap();
        assert_eq!((event.kind, event.reason), (EventKind::Normal, "StatusChanged"));
        assert_eq!(event.message, "the VM is Running (was Starting)");
        plan.status.printable_status = Some(P::Starting);
        assert_eq!(status_change(&previous, &plan), None);
        plan.status.printable_status = Some(P::CrashLoopBackOff);
        assert_eq!(status_change(&previous, &plan).unwrap().kind, EventKind::Warning);
        plan.events.push(Event {
            kind: EventKind::Warning,
            reason: "LauncherFailed",
            message: "told already".into(),
        });
        assert_eq!(status_change(&previous, &plan), None);
    }

    #[test]
    fn an_invalid_spec_is_not_started() {
        let previous = VirtualMachineStatus::default();
        let mut obs = observe(Always, &previous, Launcher::Absent, 10);
        obs.spec_error = Some("domain.memory.guest: the guest's memory is required".into());
        let refused = plan(&obs);
        assert_eq!(refused.action, Nothing);
        assert_eq!(
            condition_of(&refused, ConditionType::Failure),
            Some(("True", "InvalidSpec"))
        );
        assert_eq!(reasons(&refused), ["InvalidSpec"]);
        assert_eq!(refused.status.printable_status, Some(P::ErrorUnschedulable));
        obs.status = &refused.status;
        assert!(plan(&obs).events.is_empty(), "reported once");
    }

    #[test]
    fn a_lost_node_fails_the_vm_and_leaves_its_launcher() {
        let previous = status(Some(Running), Some(P::Running));
        let mut obs = observe(Always, &previous, running(0), 100);
        obs.node = NodeHealth::Lost;
        let lost = plan(&obs);
        assert_eq!(lost.action, Nothing);
        assert_eq!(lost.status.phase, Some(Failed));
        assert_eq!(lost.status.printable_status, Some(P::Unknown));
        assert_eq!(
            condition_of(&lost, ConditionType::Failure),
            Some(("True", "NodeUnresponsive"))
        );
        assert_eq!(reasons(&lost), ["NodeUnresponsive"]);
        assert_eq!(lost.requeue_after, Some(NODE_LOST_RECHECK));
        let read = as_read(&lost, &previous);
        obs.status = &read;
        assert!(plan(&obs).events.is_empty(), "reported once");
        // The node answers again, its launcher still running: the VM is running.
        obs.node = NodeHealth::Alive;
        let back = plan(&obs);
        assert_eq!(back.status.phase, Some(Running));
        assert_eq!(condition_of(&back, ConditionType::Failure), None);
    }

    #[test]
    fn node_health_from_the_heartbeat() {
        let timeout = Duration::from_secs(40);
        assert_eq!(node_health(None, timeout, at(100)), NodeHealth::Unknown);
        assert_eq!(node_health(Some(at(60)), timeout, at(100)), NodeHealth::Alive);
        assert_eq!(node_health(Some(at(59)), timeout, at(100)), NodeHealth::Lost);
        assert_eq!(node_health(Some(at(200)), timeout, at(100)), NodeHealth::Alive);
    }

    #[test]
    fn phase_transitions_keep_one_time_per_phase() {
        let mut previous = status(Some(Running), Some(P::Running));
        previous.phase_transition_timestamps = vec![
            PhaseTransition {
                phase: Pending,
                phase_transition_timestamp: Time(at(0)),
            },
            PhaseTransition {
                phase: Running,
                phase_transition_timestamp: Time(at(1)),
            },
        ];
        let ended = plan(&observe(Always, &previous, ended(Exit::Succeeded), 10));
        let restarted = plan(&observe(Always, &ended.status, Launcher::Absent, 11));
        let phases: Vec<_> = restarted
            .status
            .phase_transition_timestamps
            .iter()
            .map(|t| (t.phase, t.phase_transition_timestamp.0))
            .collect();
        assert_eq!(phases, [(Running, at(1)), (Succeeded, at(10)), (Pending, at(11))]);
    }

    /// A plan's phase, printable status, Ready condition (status, reason, message) and events.
    type Seen = (Option<Phase>, Option<P>, (String, String, String), Vec<&'static str>);

    #[test]
    fn a_running_launchers_guest_is_as_its_node_reports_it() {
        let previous = status(Some(Scheduled), Some(P::Starting));
        let seen = |report: Option<LauncherReport>| {
            let mut previous = previous.clone();
            previous.launcher = report;
            let plan = plan(&observe(Always, &previous, running(0), 5));
            assert_eq!(plan.action, Nothing);
            let ready = plan
                .status
                .conditions
                .iter()
                .find(|c| c.condition_type == ConditionType::Ready)
                .map(|c| (c.status.clone(), c.reason.clone().unwrap(), c.message.clone().unwrap()))
                .unwrap();
            (plan.status.phase, plan.status.printable_status, ready, reasons(&plan))
        };
        let ready =
            |status: &str, reason: &str, message: &str| (status.to_owned(), reason.to_owned(), message.to_owned());
        let other_pod = LauncherReport {
            pod: "l0".into(),
            ..report(ReportedState::Running)
        };
        let cases: Vec<(&str, Option<LauncherReport>, Seen)> = vec![
            (
                "no report yet",
                None,
                (
                    Some(Scheduled),
                    Some(P::Starting),
                    ready("False", "Starting", "the launcher is starting the VM"),
                    vec![],
                ),
            ),
            (
                "a report on an earlier pod",
                Some(other_pod),
                (
                    Some(Scheduled),
                    Some(P::Starting),
                    ready("False", "Starting", "the launcher is starting the VM"),
                    vec![],
                ),
            ),
            (
                "the launcher sets the guest up",
                Some(report(ReportedState::Starting)),
                (
                    Some(Scheduled),
                    Some(P::Starting),
                    ready("False", "Starting", "the launcher is starting the VM"),
                    vec![],
                ),
            ),
            (
                "the guest runs",
                Some(LauncherReport {
                    message: Some("domain state running (booted)".into()),
                    ..report(ReportedState::Running)
                }),
                (
                    Some(Running),
                    Some(P::Running),
                    ready("True", "Running", "domain state running (booted)"),
                    vec!["Started"],
                ),
            ),
            (
                "the guest is paused",
                Some(report(ReportedState::Paused)),
                (
                    Some(Running),
                    Some(P::Paused),
                    ready("False", "Paused", "the guest is paused"),
                    vec!["Started"],
                ),
            ),
            (
                "the guest shuts down",
                Some(report(ReportedState::ShuttingDown)),
                (
                    Some(Running),
                    Some(P::Stopping),
                    ready("False", "ShuttingDown", "the guest is shutting down"),
                    vec!["Started"],
                ),
            ),
            (
                "the guest has ended, its pod not yet",
                Some(LauncherReport {
                    guest_exit: Some(GuestExit::ShutDown),
                    ..report(ReportedState::Stopped)
                }),
                (
                    Some(Scheduled),
                    Some(P::Stopping),
                    ready("False", "Stopping", "the guest has ended; its launcher is exiting"),
                    vec![],
                ),
            ),
            (
                "the launcher does not answer",
                Some(LauncherReport {
                    message: Some("the launcher has not answered since 1970-01-01T00:01:50Z".into()),
                    ..report(ReportedState::Unreachable)
                }),
                (
                    Some(Scheduled),
                    Some(P::Starting),
                    ready(
                        "Unknown",
                        "LauncherUnreachable",
                        "the launcher has not answered since 1970-01-01T00:01:50Z",
                    ),
                    vec![],
                ),
            ),
        ];
        for (what, report, expected) in cases {
            assert_eq!(seen(report), expected, "{what}");
        }
        // Paused after running: no second Started.
        let was_running = status(Some(Running), Some(P::Running));
        let paused = plan(&observe(
            Always,
            &reporting(was_running, report(ReportedState::Paused)),
            running(0),
            5,
        ));
        assert!(paused.events.is_empty());
        assert_eq!(paused.status.printable_status, Some(P::Paused));
    }

    #[test]
    fn a_launcher_its_node_lost_ends_its_run_as_the_strategy_says() {
        let lost = LauncherReport {
            message: Some("the launcher has not answered since 1970-01-01T00:01:50Z".into()),
            ..report(ReportedState::Lost)
        };
        let previous = reporting(status(Some(Running), Some(P::Running)), lost);
        let always = plan(&observe(Always, &previous, running(0), 100));
        assert_eq!(always.action, Delete, "the lost launcher makes way for the next");
        assert_eq!(always.status.phase, Some(Failed));
        assert_eq!(always.status.printable_status, Some(P::CrashLoopBackOff));
        assert_eq!(
            condition_of(&always, ConditionType::Failure),
            Some(("True", "LauncherLost"))
        );
        assert_eq!(always.status.start_failure.as_ref().unwrap().consecutive_fail_count, 1);
        assert_eq!(reasons(&always), ["LauncherLost"]);

        let once = plan(&observe(Once, &previous, running(0), 100));
        assert_eq!((once.action, once.status.phase), (Nothing, Some(Failed)));
        assert_eq!(once.status.printable_status, Some(P::Stopped));
    }

    #[test]
    fn a_launcher_gone_with_its_pod_ended_as_its_node_saw_it() {
        let was_running = status(Some(Running), Some(P::Running));
        let exited = |code| LauncherReport {
            exit_code: Some(code),
            ..report(ReportedState::Exited)
        };
        for (strategy, report, action, phase, failure, event) in [
            (Always, exited(4), Nothing, Failed, Some("GuestCrashed"), "GuestCrashed"),
            (
                Once,
                exited(3),
                Nothing,
                Failed,
                Some("GuestDestroyed"),
                "GuestDestroyed",
            ),
            (RerunOnFailure, exited(0), Nothing, Succeeded, None, "Succeeded"),
            (Always, exited(0), Create, Pending, None, "Succeeded"),
            (
                Once,
                LauncherReport {
                    guest_exit: Some(GuestExit::Crashed),
                    ..report(ReportedState::Stopped)
                },
                Nothing,
                Failed,
                Some("GuestCrashed"),
                "GuestCrashed",
            ),
            (
                Once,
                report(ReportedState::Lost),
                Nothing,
                Failed,
                Some("LauncherLost"),
                "LauncherLost",
            ),
            (
                Once,
                report(ReportedState::Running),
                Nothing,
                Failed,
                Some("LauncherVanished"),
                "LauncherVanished",
            ),
        ] {
            let what = format!("{strategy:?} {report:?}");
            let previous = reporting(was_running.clone(), report);
            let plan = plan(&observe(strategy, &previous, Launcher::Absent, 10));
            assert_eq!((plan.action, plan.status.phase), (action, Some(phase)), "{what}");
            assert_eq!(
                condition_of(&plan, ConditionType::Failure).map(|(_, reason)| reason),
                failure,
                "{what}"
            );
            assert_eq!(reasons(&plan)[0], event, "{what}");
        }
    }

    #[test]
    fn an_ended_pod_without_an_exit_code_takes_its_nodes() {
        let previous = reporting(
            status(Some(Running), Some(P::Running)),
            LauncherReport {
                exit_code: Some(3),
                ..report(ReportedState::Exited)
            },
        );
        let launcher = ended(Exit::Failed {
            code: None,
            reason: Some("Error".into()),
        });
        let plan = plan(&observe(Once, &previous, launcher, 10));
        assert_eq!(
            condition_of(&plan, ConditionType::Failure),
            Some(("True", "GuestDestroyed"))
        );
    }
}
