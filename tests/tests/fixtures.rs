//! The fixtures, used for real (needs root).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vmlet_testkit::{Child, NetNs, PREFIX, Sandbox, VethEnd, run, veth};

fn namespace_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

#[test]
fn a_namespace_and_what_runs_in_it_go_away_on_drop() {
    let ns = NetNs::new();
    let name = ns.name().to_owned();
    assert!(name.starts_with(PREFIX));
    assert!(namespace_exists(&name));
    // Not a `Child`: something a test lost track of, which the namespace must still kill.
    let mut stray = ns.exec("sleep").arg("60").spawn().unwrap();
    vmlet_testkit::poll_until(
        "sleep to enter the namespace",
        Duration::from_secs(5),
        Duration::from_millis(10),
        || ns.pids().contains(&stray.id()).then_some(()),
    )
    .unwrap();
    drop(ns);
    assert!(!namespace_exists(&name));
    assert!(!stray.wait().unwrap().success());
}

#[test]
fn a_veth_pair_joins_two_namespaces() {
    let (a, b) = (NetNs::new(), NetNs::new());
    veth::link(
        &a,
        &VethEnd::named("left")
            .mac("02:00:00:00:aa:01")
            .mtu(1400)
            .address("192.0.2.1/24"),
        &b,
        &VethEnd::named("right")
            .mac("02:00:00:00:aa:02")
            .mtu(1400)
            .address("192.0.2.2/24"),
    );
    let link = b.ip(&["link", "show", "right"]);
    assert!(
        link.contains("mtu 1400") && link.contains("02:00:00:00:aa:02") && link.contains("state UP"),
        "{link}"
    );
    b.run("ping", &["-c", "1", "-W", "5", "192.0.2.1"]);
    // The host never sees either end.
    let host = run(Command::new("ip").args(["-o", "link"]));
    assert!(!host.contains(" left@") && !host.contains(" right@"), "{host}");
}

#[test]
fn a_sandbox_keeps_written_system_files_off_the_host() {
    let ns = NetNs::new();
    let sandbox = Sandbox::new();
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap();
    let mut writer = Child::spawn(
        "writer",
        sandbox.command(&ns, "sh").args([
            "-c",
            "echo 'nameserver 192.0.2.53' > /etc/resolv.conf && hostname sandboxed && cat /etc/resolv.conf",
        ]),
    );
    assert!(
        writer.wait_exit(Duration::from_secs(10)).unwrap().success(),
        "{}",
        writer.output()
    );
    assert_eq!(writer.output(), "nameserver 192.0.2.53\n");
    assert_eq!(
        sandbox.read_written("/etc/resolv.conf").unwrap(),
        "nameserver 192.0.2.53\n"
    );
    assert_eq!(std::fs::read_to_string("/etc/resolv.conf").unwrap(), host_resolv);
    assert_ne!(run(&mut Command::new("hostname")).trim(), "sandboxed");
    assert_eq!(sandbox.read_written("/etc/hosts"), None);
}

#[test]
fn namespaces_of_dead_test_processes_are_swept() {
    // A namespace named as if made by a process that has exited: a child that is reaped at once.
    let mut dead = Command::new("true").spawn().unwrap();
    let pid = dead.id();
    dead.wait().unwrap();
    let name = format!("{PREFIX}{pid}-1-0");
    run(Command::new("ip").args(["netns", "add", &name]));
    let swept = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "sweeper_helper", "--ignored", "--nocapture"])
        .output()
        .unwrap();
    let exists = namespace_exists(&name);
    if exists {
        let _ = run(Command::new("ip").args(["netns", "delete", &name]));
    }
    assert!(swept.status.success(), "{}", String::from_utf8_lossy(&swept.stderr));
    assert!(!exists, "{name} survived the sweep");
}

/// Run by `namespaces_of_dead_test_processes_are_swept` in a fresh process, whose first fixture sweeps.
#[test]
#[ignore = "run by another test"]
fn sweeper_helper() {
    NetNs::new();
}
