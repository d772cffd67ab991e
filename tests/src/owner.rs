//! Names that record which process made a resource, so that what a killed test process left behind (namespaces,
//! scratch directories) can be recognised and removed by the next one.

use std::fs;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Every name the testkit makes starts with this.
pub const PREFIX: &str = "vmlet-t-";

/// A process, identified by its pid and its start time, so a reused pid is not taken for the same process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Owner {
    pid: u32,
    start: u64,
}

impl Owner {
    pub(crate) fn current() -> Owner {
        static CURRENT: OnceLock<Owner> = OnceLock::new();
        *CURRENT.get_or_init(|| Owner::of(std::process::id()).expect("reading /proc/self/stat"))
    }

    fn of(pid: u32) -> Option<Owner> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Some(Owner {
            pid,
            start: start_time(&stat)?,
        })
    }

    pub(crate) fn is_alive(self) -> bool {
        Owner::of(self.pid) == Some(self)
    }

    /// The owner recorded in a name made by [`unique_name`], if it is one.
    pub(crate) fn from_name(name: &str) -> Option<Owner> {
        // A program under test may name what it makes after a test's name: `NAME.SUFFIX` has NAME's owner.
        let name = name.split_once('.').map_or(name, |(name, _)| name);
        let mut fields = name.strip_prefix(PREFIX)?.split('-');
        let pid = fields.next()?.parse().ok()?;
        let start = fields.next()?.parse().ok()?;
        fields.next()?.parse::<u64>().ok()?;
        fields.next().is_none().then_some(Owner { pid, start })
    }
}

/// A name no other live process uses and this process has not used before: `vmlet-t-PID-START-N`.
pub fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let owner = Owner::current();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{PREFIX}{}-{}-{n}", owner.pid, owner.start)
}

/// Field 22 of `/proc/PID/stat`, the start time in clock ticks since boot. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from the last `)`.
fn start_time(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_start_time_past_a_command_name_with_spaces() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(start_time(stat), Some(987654));
        assert_eq!(start_time("1 (x) S 1"), None);
    }

    #[test]
    fn names_round_trip_to_their_owner() {
        let name = unique_name();
        assert!(name.starts_with(PREFIX));
        assert_eq!(Owner::from_name(&name), Some(Owner::current()));
        assert_ne!(unique_name(), name);
    }

    #[test]
    fn names_made_after_a_test_name_have_its_owner() {
        let name = format!("{}.default-vm", unique_name());
        assert_eq!(Owner::from_name(&name), Some(Owner::current()));
    }

    #[test]
    fn foreign_names_have_no_owner() {
        for name in [
            "vmlet-t-",
            "vmlet-t-1-2",
            "vmlet-t-1-2-3-4",
            "vmlet-t-x-2-3",
            "other-1-2-3",
            "vmlet-t-1-2-x",
        ] {
            assert_eq!(Owner::from_name(name), None, "{name}");
        }
    }

    #[test]
    fn this_process_is_alive_and_a_dead_one_is_not() {
        assert!(Owner::current().is_alive());
        let mut other = Owner::current();
        other.start += 1;
        assert!(!other.is_alive());
    }
}
