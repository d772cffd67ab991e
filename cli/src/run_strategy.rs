//! What `start`, `stop` and `restart` mean for a VM, from its run strategy and whether it runs: virtctl's meaning.
//! A strategy that runs the VM by itself is changed (`stop` on `Always` makes it `Halted`, `start` on `Halted`
//! makes it `Always`); a `Manual` VM is asked once, through the `vmlet.dev/run` annotation.

use vmlet_api::{PrintableStatus, RunStrategy, VirtualMachineSpec, VirtualMachineStatus};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    Start,
    Stop,
    Restart,
}

/// A change to the VM object (its manifest in standalone mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Strategy(RunStrategy),
    /// KubeVirt's older `spec.running`: `true` for Always, `false` for Halted.
    Running(bool),
    /// The `vmlet.dev/run` request: `start` or `stop`.
    Request(&'static str),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    Change(Change),
    /// End the current run through the launcher; the strategy starts the next. With `kill` when only a failure
    /// makes the strategy start it again (`RerunOnFailure`), else with an ACPI shutdown.
    EndRun {
        kill: bool,
    },
    /// A `Manual` VM: ask it to stop, wait until it has, ask it to start.
    StopThenStart,
    Refuse(String),
}

/// Whether the VM has a run under way (starting, running, paused, stopping).
pub fn runs(status: Option<&VirtualMachineStatus>) -> bool {
    matches!(
        status.and_then(|s| s.printable_status),
        Some(
            PrintableStatus::Starting
                | PrintableStatus::Running
                | PrintableStatus::Paused
                | PrintableStatus::Stopping
                | PrintableStatus::Provisioning
        )
    )
}

/// The plan for a VM: [`plan`] of its run strategy, with a change of strategy written in the field the VM uses. A
/// VM that says `spec.running` keeps saying it (`true` for Always, `false` for Halted), as virtctl patches it:
/// `runStrategy` beside `running` would make the VM invalid, for KubeVirt and vmlet alike.
pub fn plan_for(verb: Verb, spec: &VirtualMachineSpec, running: bool) -> Plan {
    match plan(verb, spec.run_strategy(), running) {
        Plan::Change(Change::Strategy(strategy)) if spec.run_strategy.is_none() && spec.running.is_some() => {
            Plan::Change(Change::Running(strategy == RunStrategy::Always))
        }
        plan => plan,
    }
}

pub fn plan(verb: Verb, strategy: RunStrategy, running: bool) -> Plan {
    use RunStrategy::*;
    let refuse = |why: &str| Plan::Refuse(why.to_owned());
    match (verb, strategy, running) {
        (Verb::Start, Halted, _) => Plan::Change(Change::Strategy(Always)),
        (Verb::Start, Manual, false) => Plan::Change(Change::Request("start")),
        (Verb::Start, _, true) => refuse("the VM is already running"),
        (Verb::Start, Always | RerunOnFailure, false) => {
            refuse("the VM's run strategy starts it by itself; it is waiting to start again (see its status)")
        }
        (Verb::Start, Once, false) => {
            refuse("a VM with run strategy Once runs once; set its runStrategy to Always or Manual to run it again")
        }
        (Verb::Stop, Always | RerunOnFailure | Once, _) => Plan::Change(Change::Strategy(Halted)),
        (Verb::Stop, Manual, true) => Plan::Change(Change::Request("stop")),
        (Verb::Stop, Manual | Halted, _) => refuse("the VM is not running"),
        (Verb::Restart, _, false) => refuse("the VM is not running"),
        (Verb::Restart, Always, true) => Plan::EndRun { kill: false },
        (Verb::Restart, RerunOnFailure, true) => Plan::EndRun { kill: true },
        (Verb::Restart, Manual, true) => Plan::StopThenStart,
        (Verb::Restart, Once | Halted, true) => {
            refuse("the VM's run strategy would not start it again; use stop, then start")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RunStrategy::*;

    #[test]
    fn every_verb_strategy_and_state() {
        let change = |c| Plan::Change(c);
        let cases = [
            (Verb::Start, Halted, false, Some(change(Change::Strategy(Always)))),
            (Verb::Start, Halted, true, Some(change(Change::Strategy(Always)))),
            (Verb::Start, Manual, false, Some(change(Change::Request("start")))),
            (Verb::Start, Manual, true, None),
            (Verb::Start, Always, true, None),
            (Verb::Start, Always, false, None),
            (Verb::Start, RerunOnFailure, false, None),
            (Verb::Start, Once, false, None),
            (Verb::Stop, Always, true, Some(change(Change::Strategy(Halted)))),
            (Verb::Stop, Always, false, Some(change(Change::Strategy(Halted)))),
            (Verb::Stop, RerunOnFailure, true, Some(change(Change::Strategy(Halted)))),
            (Verb::Stop, Once, true, Some(change(Change::Strategy(Halted)))),
            (Verb::Stop, Manual, true, Some(change(Change::Request("stop")))),
            (Verb::Stop, Manual, false, None),
            (Verb::Stop, Halted, false, None),
            (Verb::Restart, Always, true, Some(Plan::EndRun { kill: false })),
            (Verb::Restart, RerunOnFailure, true, Some(Plan::EndRun { kill: true })),
            (Verb::Restart, Manual, true, Some(Plan::StopThenStart)),
            (Verb::Restart, Once, true, None),
            (Verb::Restart, Always, false, None),
            (Verb::Restart, Manual, false, None),
        ];
        for (verb, strategy, running, expected) in cases {
            let got = plan(verb, strategy, running);
            let spec = VirtualMachineSpec {
                run_strategy: Some(strategy),
                ..VirtualMachineSpec::default()
            };
            assert_eq!(plan_for(verb, &spec, running), got, "a runStrategy VM");
            match expected {
                Some(plan) => assert_eq!(got, plan, "{verb:?} {strategy:?} running={running}"),
                None => assert!(
                    matches!(got, Plan::Refuse(_)),
                    "{verb:?} {strategy:?} running={running}: {got:?}"
                ),
            }
        }
    }

    #[test]
    fn a_vm_that_says_running_keeps_saying_it() {
        let spec = |running| VirtualMachineSpec {
            running: Some(running),
            ..VirtualMachineSpec::default()
        };
        assert_eq!(
            plan_for(Verb::Stop, &spec(true), true),
            Plan::Change(Change::Running(false))
        );
        assert_eq!(
            plan_for(Verb::Start, &spec(false), false),
            Plan::Change(Change::Running(true))
        );
        assert_eq!(plan_for(Verb::Restart, &spec(true), true), Plan::EndRun { kill: false });
        assert!(matches!(plan_for(Verb::Stop, &spec(false), false), Plan::Refuse(_)));
    }
}
