//! What a process uses of the machine, from `/proc`: the guest's QEMU, reported over the control socket so that the
//! handler, which may see none of the pod's processes, can export it.

use std::path::Path;

use vmlet_control::ProcessUsage;

/// The usage of the process whose pid `pid_file` holds (libvirt's pid file of a domain's QEMU).
pub fn of_pid_file(pid_file: &Path) -> Option<ProcessUsage> {
    let pid: u32 = std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
    of(pid)
}

/// The CPU time (user and system) and the resident memory of `pid`.
pub fn of(pid: u32) -> Option<ProcessUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    // SAFETY: sysconf reads configuration values and touches no memory of ours.
    let (hz, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
    parse(&stat, &statm, u64::try_from(hz).ok()?, u64::try_from(page).ok()?)
}

/// `/proc/PID/stat` and `/proc/PID/statm` read with the clock's ticks per second and the page size.
fn parse(stat: &str, statm: &str, hz: u64, page: u64) -> Option<ProcessUsage> {
    // The fields after the command, which may hold spaces and parentheses: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(ProcessUsage {
        cpu_seconds: ticks as f64 / hz.max(1) as f64,
        resident_bytes: pages * page,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_and_resident_memory_are_read_past_a_command_with_parentheses() {
        let stat = "4242 (qemu-system (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000 0 0";
        let usage = parse(stat, "100000 2048 512 1 0 4000 0\n", 100, 4096).unwrap();
        assert_eq!(
            usage,
            ProcessUsage {
                cpu_seconds: 3.0,
                resident_bytes: 2048 * 4096
            }
        );
        assert_eq!(parse("4242 (qemu) S 1", "1 2", 100, 4096), None);
    }

    #[test]
    fn this_process_has_resident_memory() {
        assert!(of(std::process::id()).unwrap().resident_bytes > 0);
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("guest.pid");
        std::fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
        assert!(of_pid_file(&pid_file).is_some());
        assert_eq!(of_pid_file(&dir.path().join("none.pid")), None);
    }
}
