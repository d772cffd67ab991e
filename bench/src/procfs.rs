//! What `/proc` says about a process: when it started, whether it has exited, its children.

use std::time::{Duration, SystemTime};

use anyhow::anyhow;

/// When a process started, from its start time in clock ticks since boot (`/proc/PID/stat`, field 22) and the
/// uptime now (`/proc/uptime`, the same clock).
pub fn process_start(pid: u32) -> anyhow::Result<SystemTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let uptime = std::fs::read_to_string("/proc/uptime")?;
    let now = SystemTime::now();
    let ticks: f64 = stat_field(&stat, 22)
        .ok_or_else(|| anyhow!("no start time for {pid}"))?
        .parse()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.ok_or_else(|| anyhow!("no CLK_TCK"))?;
    let uptime: f64 = uptime.split_whitespace().next().unwrap_or_default().parse()?;
    let age = (uptime - ticks / hz as f64).max(0.0);
    Ok(now - Duration::from_secs_f64(age))
}

/// Field `n` (from 1) of a `/proc/PID/stat` line. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted from the last `)`.
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(n.checked_sub(3)?)
}

/// Whether the process is gone or a zombie: a child of ours stays a zombie until reaped.
pub fn has_exited(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat_field(&stat, 3).map(|state| state == "Z" || state == "X"))
        .unwrap_or(true)
}

pub fn first_child(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stat_fields_past_the_command_name() {
        let stat = "4242 (qemu (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(stat_field(stat, 3), Some("S"));
        assert_eq!(stat_field(stat, 22), Some("987654"));
        assert_eq!(stat_field(stat, 2), None);
    }

    #[test]
    fn this_process_started_in_the_past() {
        let started = process_start(std::process::id()).unwrap();
        let age = SystemTime::now().duration_since(started).unwrap();
        assert!(age < Duration::from_secs(3600), "{age:?}");
        assert!(!has_exited(std::process::id()));
    }
}
