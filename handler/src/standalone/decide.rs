//! What one pass does to a VM's pod, decided from what is observed of it: pure, so that each decision is tested
//! without processes or files. `Standalone::reconcile` observes, asks, and carries the actions out.

use super::pod::{ShimState, StopFor};
use crate::lifecycle::LauncherAction;

/// What is observed of a VM's pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodView {
    pub shim: ShimState,
    /// Why the pod was asked to stop, if it was.
    pub stopping: Option<StopFor>,
    /// The launcher had its guest's grace period and the margin since it was asked to stop.
    pub stop_overdue: bool,
    /// The launcher runs another spec than the manifest's valid one: the manifest was edited.
    pub runs_other_spec: bool,
}

/// One thing to do to the pod, in the order given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodAction {
    /// Ask the launcher to stop (SIGTERM: the guest gets its ACPI shutdown and grace period).
    Stop(StopFor),
    /// Make a new pod, in place of the one there is.
    Create,
    /// Kill the launcher that outstayed its stop: the shim, whose death takes the launcher with it.
    Kill { shim_pid: u32 },
    /// Remove the pod of a launcher that ended after it was asked to stop, for this reason.
    Remove(StopFor),
}

/// Whether the pod must stop before the run strategy is asked: its VM's manifest was edited, and the VM starts
/// again with the new spec. A broken edit (no valid manifest) leaves the VM as it is.
pub fn restart_for_edit(pod: Option<&PodView>, manifest_valid: bool) -> Option<PodAction> {
    let pod = pod?;
    (manifest_valid && pod.stopping.is_none() && pod.runs_other_spec).then_some(PodAction::Stop(StopFor::Restart))
}

/// What to do to the pod after the run strategy decided `action`; `ready` says whether the VM's volumes and images
/// are there, without which a pod is not made. A pod whose launcher ended and that nobody stopped waits for the
/// plan to delete it; one that was stopped goes as soon as its launcher is gone.
pub fn pod_actions(pod: Option<&PodView>, action: LauncherAction, ready: bool) -> Vec<PodAction> {
    let mut actions = Vec::new();
    let mut stopping = pod.and_then(|p| p.stopping);
    match action {
        LauncherAction::Create if ready => return vec![PodAction::Create],
        LauncherAction::Delete if pod.is_some() && stopping.is_none() => {
            actions.push(PodAction::Stop(StopFor::Good));
            stopping = Some(StopFor::Good);
        }
        _ => {}
    }
    if let (Some(pod), Some(why)) = (pod, stopping) {
        match pod.shim {
            ShimState::Ended(_) | ShimState::Lost => actions.push(PodAction::Remove(why)),
            ShimState::Running(shim) if pod.stop_overdue => actions.push(PodAction::Kill { shim_pid: shim.pid }),
            ShimState::Running(_) | ShimState::Starting => {}
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::super::pod::{ExitRecord, ShimRecord};
    use super::*;

    const RUNNING: ShimState = ShimState::Running(ShimRecord { pid: 7, start_time: 1 });
    const ENDED: ShimState = ShimState::Ended(ExitRecord {
        code: Some(0),
        signal: None,
        finished_at: 1,
    });

    fn pod(shim: ShimState) -> PodView {
        PodView {
            shim,
            stopping: None,
            stop_overdue: false,
            runs_other_spec: false,
        }
    }

    fn stopping(shim: ShimState, why: StopFor) -> PodView {
        PodView {
            stopping: Some(why),
            ..pod(shim)
        }
    }

    #[test]
    fn an_edited_manifest_restarts_a_running_pod_once_and_a_broken_one_never() {
        let edited = PodView {
            runs_other_spec: true,
            ..pod(RUNNING)
        };
        assert_eq!(
            restart_for_edit(Some(&edited), true),
            Some(PodAction::Stop(StopFor::Restart))
        );
        assert_eq!(restart_for_edit(Some(&edited), false), None, "a broken edit");
        let already = PodView {
            stopping: Some(StopFor::Restart),
            ..edited
        };
        assert_eq!(restart_for_edit(Some(&already), true), None, "asked once");
        assert_eq!(restart_for_edit(Some(&pod(RUNNING)), true), None, "not edited");
        assert_eq!(restart_for_edit(None, true), None, "no pod");
    }

    /// What it is, the pod, the plan's action, whether the VM's volumes are ready, and what is done.
    type Case = (&'static str, Option<PodView>, LauncherAction, bool, Vec<PodAction>);

    #[test]
    fn each_plan_and_pod_leads_to_its_actions() {
        use LauncherAction::{Create, Delete, None as Nothing};
        use PodAction::{Kill, Remove, Stop};
        use StopFor::{Good, Restart};
        let overdue = PodView {
            stop_overdue: true,
            ..stopping(RUNNING, Good)
        };
        let cases: [Case; 14] = [
            ("a VM to start", None, Create, true, vec![PodAction::Create]),
            ("its volumes not there yet", None, Create, false, vec![]),
            (
                "an ended pod replaced",
                Some(pod(ENDED)),
                Create,
                true,
                vec![PodAction::Create],
            ),
            ("a replacement that waits", Some(pod(ENDED)), Create, false, vec![]),
            (
                "a running pod to stop",
                Some(pod(RUNNING)),
                Delete,
                true,
                vec![Stop(Good)],
            ),
            (
                "a starting pod to stop",
                Some(pod(ShimState::Starting)),
                Delete,
                true,
                vec![Stop(Good)],
            ),
            (
                "an ended pod to delete",
                Some(pod(ENDED)),
                Delete,
                true,
                vec![Stop(Good), Remove(Good)],
            ),
            (
                "a lost pod to delete",
                Some(pod(ShimState::Lost)),
                Delete,
                true,
                vec![Stop(Good), Remove(Good)],
            ),
            ("nothing to delete", None, Delete, true, vec![]),
            ("stopped once", Some(stopping(RUNNING, Good)), Delete, true, vec![]),
            (
                "a launcher that outstays its stop",
                Some(overdue),
                Nothing,
                true,
                vec![Kill { shim_pid: 7 }],
            ),
            (
                "a stopped launcher that ended",
                Some(stopping(ENDED, Good)),
                Nothing,
                true,
                vec![Remove(Good)],
            ),
            (
                "an edit's stop that ended",
                Some(stopping(ENDED, Restart)),
                Nothing,
                true,
                vec![Remove(Restart)],
            ),
            (
                "an ended pod nobody stopped waits for the plan",
                Some(pod(ENDED)),
                Nothing,
                true,
                vec![],
            ),
        ];
        for (what, view, action, ready, expected) in cases {
            assert_eq!(pod_actions(view.as_ref(), action, ready), expected, "{what}");
        }
    }
}
