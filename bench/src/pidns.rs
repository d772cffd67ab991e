//! The processes of a VM pod's PID namespace, what each one is, and the memory each one holds.

use std::fs;
use std::path::Path;

use serde::Serialize;

use crate::stats::Memory;

/// One process of the namespace and its memory, read from `/proc`.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessMemory {
    /// What the process is, from its executable and arguments.
    pub role: String,
    /// Its pid as the host sees it.
    pub pid: u32,
    /// Its pid inside the namespace.
    pub ns_pid: u32,
    pub memory: Memory,
    /// Resident pages mapped from libvirt's libraries (`libvirt.so`, its driver modules): with the driver in-process,
    /// the part of the launcher's resident set that is libvirt's code.
    pub libvirt_libraries_kib: u64,
}

/// Every process in the PID namespace of `pid` (a host pid), with its role and memory. Processes that exit while
/// being read are left out.
pub fn processes_of_namespace(pid: u32) -> std::io::Result<Vec<ProcessMemory>> {
    let namespace = fs::read_link(format!("/proc/{pid}/ns/pid"))?;
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        if fs::read_link(format!("/proc/{pid}/ns/pid")).ok().as_ref() != Some(&namespace) {
            continue;
        }
        if let Some(process) = describe(pid) {
            found.push(process);
        }
    }
    found.sort_by_key(|process| process.ns_pid);
    Ok(found)
}

/// The role and memory of one process; `None` if it is gone (or a zombie, which has no executable).
pub fn describe(pid: u32) -> Option<ProcessMemory> {
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmdline
        .split(|&byte| byte == 0)
        .skip(1)
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    let ns_pid = innermost_pid(&status)?;
    Some(ProcessMemory {
        role: role(&exe, ns_pid, &args),
        pid,
        ns_pid,
        memory: Memory::of(pid).ok()?,
        libvirt_libraries_kib: libvirt_libraries_kib(pid).ok()?,
    })
}

/// The pid a process has in its own namespace: the last field of `NSpid:`.
fn innermost_pid(status: &str) -> Option<u32> {
    let line = status.lines().find(|line| line.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

/// Classifies by executable rather than by name (`comm`), which a process may change: the launcher's PID 1 (its
/// reaper), the launcher proper, a driver process (whatever its executable), QEMU.
fn role(exe: &Path, ns_pid: u32, args: &[String]) -> String {
    let name = exe
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The first argument that is not an option: a subcommand, if the program has them.
    let subcommand = args.iter().find(|arg| !arg.starts_with('-')).map(String::as_str);
    match (name.as_str(), subcommand) {
        ("vmlet-launcher", _) if ns_pid == 1 => "launcher PID 1 (reaper)".to_owned(),
        ("vmlet-launcher", Some("run")) => "launcher".to_owned(),
        ("vmlet-driver", _) => "driver (vmlet-driver)".to_owned(),
        (qemu, _) if qemu.starts_with("qemu-system") => "QEMU".to_owned(),
        (other, Some(subcommand)) => format!("{other} {subcommand}"),
        (other, None) => other.to_owned(),
    }
}

/// The resident KiB of the mappings of files whose path contains `/libvirt` (`/usr/lib/.../libvirt.so.0`,
/// `.../libvirt/connection-driver/libvirt_driver_qemu.so`).
fn libvirt_libraries_kib(pid: u32) -> std::io::Result<u64> {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    Ok(rss_of_mappings(&smaps, |path| path.contains("/libvirt")))
}

/// Sums the `Rss:` of the mappings in `smaps` whose path satisfies `wanted`.
fn rss_of_mappings(smaps: &str, wanted: impl Fn(&str) -> bool) -> u64 {
    let mut total = 0;
    let mut counting = false;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: `start-end perms offset dev inode [path]`; the path is the sixth field.
            counting = fields.nth(4).is_some_and(&wanted);
        } else if counting && first == "Rss:" {
            total += fields.next().and_then(|kib| kib.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    total
}

/// The sum over every process of a pod but QEMU: what the pod costs besides its guest.
pub fn all_but_qemu(processes: &[ProcessMemory]) -> ProcessMemory {
    let others: Vec<&ProcessMemory> = processes.iter().filter(|p| p.role != "QEMU").collect();
    let sum = |field: fn(&ProcessMemory) -> u64| others.iter().map(|p| field(p)).sum::<u64>();
    ProcessMemory {
        role: "all but QEMU".to_owned(),
        pid: 0,
        ns_pid: 0,
        memory: Memory {
            rss_kib: sum(|p| p.memory.rss_kib),
            pss_kib: sum(|p| p.memory.pss_kib),
            anonymous_kib: sum(|p| p.memory.anonymous_kib),
        },
        libvirt_libraries_kib: sum(|p| p.libvirt_libraries_kib),
    }
}

/// The header of the memory table that [`print_row`] and [`print_pod`] fill, KiB.
pub fn print_header() {
    println!(
        "{:<40} {:>6} {:>8} {:>8} {:>8} {:>12}",
        "process", "ns pid", "RSS", "PSS", "anon", "libvirt libs"
    );
}

/// One process outside a pod (a bare QEMU, dnsmasq).
pub fn print_row(label: &str, process: &ProcessMemory) {
    line(label, "", process);
}

/// Every process of a pod, then their sum but QEMU's.
pub fn print_pod(pod: &str, processes: &[ProcessMemory]) {
    for process in processes {
        line(
            &format!("{pod}: {}", process.role),
            &process.ns_pid.to_string(),
            process,
        );
    }
    line(&format!("{pod}: all but QEMU"), "", &all_but_qemu(processes));
}

fn line(label: &str, ns_pid: &str, process: &ProcessMemory) {
    let m = process.memory;
    println!(
        "{label:<40} {ns_pid:>6} {:>8} {:>8} {:>8} {:>12}",
        m.rss_kib, m.pss_kib, m.anonymous_kib, process.libvirt_libraries_kib
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_the_processes_of_a_vm_pod_apart() {
        let launcher = Path::new("/work/target/release/vmlet-launcher");
        let run = ["--log-json".to_owned(), "run".to_owned(), "--vm-spec".to_owned()];
        assert_eq!(role(launcher, 1, &run), "launcher PID 1 (reaper)");
        assert_eq!(role(launcher, 2, &run), "launcher");
        assert_eq!(role(launcher, 9, &["driver".to_owned()]), "vmlet-launcher driver");
        assert_eq!(
            role(Path::new("/usr/bin/vmlet-driver"), 3, &[]),
            "driver (vmlet-driver)"
        );
        assert_eq!(
            role(Path::new("/usr/bin/qemu-system-x86_64"), 7, &["-name".to_owned()]),
            "QEMU"
        );
    }

    #[test]
    fn reads_the_innermost_pid() {
        assert_eq!(innermost_pid("Name:\tx\nNSpid:\t4242\t1\n"), Some(1));
        assert_eq!(innermost_pid("NSpid:\t77\n"), Some(77));
        assert_eq!(innermost_pid("Name:\tx\n"), None);
    }

    #[test]
    fn sums_the_resident_pages_of_matching_mappings() {
        let smaps = "\
7f00-7f10 r-xp 00000000 08:01 123 /usr/lib/x86_64-linux-gnu/libvirt.so.0.9000.0
Size:                 64 kB
Rss:                  40 kB
7f10-7f20 r--p 00000000 08:01 124 /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                  30 kB
7f20-7f30 rw-p 00000000 00:00 0
Rss:                   8 kB
7f30-7f40 r-xp 00000000 08:01 125 /usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so
Rss:                   2 kB
";
        assert_eq!(rss_of_mappings(smaps, |path| path.contains("/libvirt")), 42);
    }

    #[test]
    fn finds_this_process_in_its_namespace() {
        let me = describe(std::process::id()).unwrap();
        assert!(me.memory.rss_kib > 0);
        let all = processes_of_namespace(std::process::id()).unwrap();
        assert!(
            all.iter().any(|p| p.ns_pid == me.ns_pid && p.role == me.role),
            "{all:?}"
        );
    }

    #[test]
    fn sums_a_pod_without_its_qemu() {
        let process = |role: &str, rss_kib, anonymous_kib, libvirt_libraries_kib| ProcessMemory {
            role: role.to_owned(),
            pid: 1,
            ns_pid: 1,
            memory: Memory {
                rss_kib,
                pss_kib: rss_kib / 2,
                anonymous_kib,
            },
            libvirt_libraries_kib,
        };
        let pod = [
            process("launcher PID 1 (reaper)", 3000, 270, 0),
            process("launcher", 6500, 490, 0),
            process("QEMU", 266_000, 183_000, 0),
            process("driver (vmlet-driver)", 28_700, 7240, 4920),
        ];
        let sum = all_but_qemu(&pod);
        assert_eq!(
            sum.memory,
            Memory {
                rss_kib: 38_200,
                pss_kib: 19_100,
                anonymous_kib: 8000
            }
        );
        assert_eq!(sum.libvirt_libraries_kib, 4920);
    }
}
