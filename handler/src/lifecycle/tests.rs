use super::*;
use vmlet_api::GuestExit;

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
    let ready = |status: &str, reason: &str, message: &str| (status.to_owned(), reason.to_owned(), message.to_owned());
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
