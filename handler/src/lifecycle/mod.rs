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
    Condition, ConditionType, LauncherReport, Phase, PhaseTransition, PrintableStatus, ReportedState, RunStrategy,
    StartFailure, VirtualMachineStatus,
};
use vmlet_control::LauncherExit;

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
    /// Any other end. `code` is the launcher's exit code when it exited ([`LauncherExit`]); `None` when it was
    /// killed or vanished with no code.
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
        (_, Some(guest)) => match LauncherExit::from(vmlet_control::Exit::from(guest)) {
            LauncherExit::Clean => Some(Exit::Succeeded),
            code => Some(failed(code.code().into())),
        },
        (ReportedState::Failed, None) => Some(failed(LauncherExit::Failed.code().into())),
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
    let was = before.map_or("new", PrintableStatus::as_str);
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
        message: format!("the VM is {after} (was {was})"),
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
    match (code, code.and_then(LauncherExit::from_code)) {
        (_, Some(LauncherExit::Failed)) => ("LauncherFailed", format!("the launcher could not run the VM{detail}")),
        (_, Some(LauncherExit::Destroyed)) => ("GuestDestroyed", format!("the guest was destroyed{detail}")),
        (_, Some(LauncherExit::Crashed)) => ("GuestCrashed", format!("the guest crashed or QEMU died{detail}")),
        (Some(code), _) => (
            "LauncherFailed",
            format!("the launcher exited with code {code}{detail}"),
        ),
        (None, _) => ("LauncherKilled", format!("the launcher was killed{detail}")),
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
        last_transition_time: Some(last_transition_time),
        ..Condition::new(condition_type, status, reason, message.to_owned())
    }
}

/// `to - from`, or zero when `to` is not later.
fn duration_between(from: Timestamp, to: Timestamp) -> Duration {
    Duration::try_from(to.duration_since(from)).unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests;
