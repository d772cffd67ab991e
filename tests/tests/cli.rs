//! The `vmlet` command in standalone mode, with real programs on a real guest (the test guest, with a shell on its
//! serial console): `console` driven through tmux (typed commands, their output, Ctrl-] to leave, the same shell on
//! the next attach); `vnc` through vncsnapshot, a real VNC client, twice; `pause` and `unpause` seen in what the
//! guest does (console output and ping stop, then come back); `stop`, `start` and `restart` likewise, with the
//! manifest edited in place.
//!
//! Needs root, tmux and vncsnapshot (scripts/setup), and the built workspace (`vmlet`, `vmlet-handler`,
//! `vmlet-launcher`, `vmlet-driver`).

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vmlet_testkit::standalone::{BOOT, Machine, WAIT};
use vmlet_testkit::tmux::Tmux;
use vmlet_testkit::vm_pod::{GuestSpec, one_guest_at_a_time};
use vmlet_testkit::{Child, ScratchDir, binary, output_within, poll_until};

fn vmlet(machine: &Machine) -> Command {
    let mut command = Command::new(binary("vmlet"));
    command.arg("--manifests").arg(machine.manifests());
    command
}

fn vmlet_ok(machine: &Machine, args: &[&str]) -> String {
    let output = output_within(vmlet(machine).args(args), WAIT).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "vmlet {args:?}: {text}");
    text
}

fn pings(machine: &Machine, address: &str) -> bool {
    machine
        .host()
        .exec("ping")
        .args(["-c", "1", "-W", "1", address])
        .output()
        .unwrap()
        .status
        .success()
}

fn console_len(machine: &Machine) -> usize {
    machine.console("web").len()
}

/// How many of a JPEG's samples are bright (text on the guest's black screen); a blank screen has none.
fn bright_samples(path: &Path) -> usize {
    let mut decoder = jpeg_decoder::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let pixels = decoder.decode().unwrap();
    pixels.iter().filter(|v| **v > 96).count()
}

#[test]
fn the_vmlet_command_drives_a_standalone_vm() {
    let _guest = one_guest_at_a_time();
    let mut machine = Machine::new();
    machine.start_handler();
    let spec = GuestSpec {
        name: "web".into(),
        kernel_args: "vmlet.ping=10.111.0.1 vmlet.shell=1".into(),
        ..GuestSpec::new("bridge: {}", "10.111.0.1")
    };
    let manifest = machine.manifests().join("web.yaml");
    std::fs::write(&manifest, format!("# the web VM, by hand\n{}", spec.manifest())).unwrap();
    machine.wait_lease("web");
    machine.wait_status("web", &["Running", "True", "10.111.0.2"], WAIT);
    let list = vmlet_ok(&machine, &["list"]);
    assert!(
        list.starts_with("NAME") && list.contains("web") && list.contains("10.111.0.2"),
        "{list}"
    );

    // The console: a command typed and its output; Ctrl-] leaves; the next attach finds the same shell.
    let tmux = Tmux::new();
    let attach = format!(
        "{} --manifests {} console web; echo CONSOLE-LEFT; sleep 600",
        binary("vmlet").display(),
        machine.manifests().display()
    );
    tmux.start(&attach, true);
    tmux.wait_for("connected to the console of web", WAIT);
    tmux.keys(&["Enter"]);
    tmux.keys(&["X=first-attach; echo sum=$((6*7))", "Enter"]);
    tmux.wait_for("sum=42", WAIT);
    tmux.keys(&["C-]"]);
    tmux.wait_for("CONSOLE-LEFT", WAIT);
    tmux.start(&attach, false);
    tmux.wait_for("connected to the console of web", WAIT);
    tmux.keys(&["echo again=$X", "Enter"]);
    tmux.wait_for("again=first-attach", WAIT);
    // A ticker on the console, for the pause below.
    tmux.keys(&["while :; do echo tick; sleep 1; done &", "Enter"]);
    tmux.keys(&["C-]"]);
    tmux.wait_for("CONSOLE-LEFT", WAIT);
    let ticking = console_len(&machine);
    poll_until("the ticker", WAIT, Duration::from_millis(200), || {
        (console_len(&machine) > ticking + 10).then_some(())
    })
    .unwrap();

    // The screen, through a real VNC client, twice: each connection is a fresh one.
    let mut proxy = vmlet(&machine);
    proxy.args(["vnc", "web", "--proxy-only"]);
    let proxy = Child::spawn("vmlet vnc", &mut proxy);
    let line = proxy.wait_for_line("\"port\"", WAIT).unwrap();
    let port: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    let port = port["port"].as_u64().unwrap();
    let shots = ScratchDir::new();
    for shot in ["first.jpg", "second.jpg"] {
        let path = shots.join(shot);
        let output = output_within(
            Command::new("vncsnapshot")
                .args(["-quiet", &format!("127.0.0.1::{port}")])
                .arg(&path),
            WAIT,
        )
        .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let bright = bright_samples(&path);
        assert!(
            bright > 100,
            "{shot}: the screen is not blank ({bright} bright samples)"
        );
    }
    drop(proxy);

    // Paused: no console output, no answer to ping; unpaused: both back.
    assert!(pings(&machine, "10.111.0.2"));
    assert!(vmlet_ok(&machine, &["pause", "web"]).contains("web: paused"));
    std::thread::sleep(Duration::from_secs(1));
    let paused_at = console_len(&machine);
    assert!(!pings(&machine, "10.111.0.2"), "a paused guest answers no ping");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(console_len(&machine), paused_at, "a paused guest prints nothing");
    machine.wait_status("web", &["Paused"], WAIT);
    assert!(vmlet_ok(&machine, &["unpause", "web"]).contains("web: running"));
    poll_until("ticks again", WAIT, Duration::from_millis(200), || {
        (console_len(&machine) > paused_at + 10).then_some(())
    })
    .unwrap();
    assert!(pings(&machine, "10.111.0.2"));

    // restart: the Always VM's guest shuts down and its strategy boots it again, in a new pod.
    let shim = machine.shim_pid("web");
    assert!(vmlet_ok(&machine, &["restart", "web"]).contains("web: restarting"));
    poll_until("a new launcher", BOOT, Duration::from_millis(250), || {
        let record = std::fs::read_to_string(machine.pod_dir("web").join("shim.json")).ok()?;
        let record: serde_json::Value = serde_json::from_str(&record).ok()?;
        (record["pid"].as_u64()? as u32 != shim).then_some(())
    })
    .unwrap_or_else(|timeout| panic!("{timeout}\n{}", machine.diagnostics("web")));
    machine.wait_lease("web");

    // stop: Always becomes Halted in the manifest, the rest of it untouched, and the guest goes.
    let before = std::fs::read_to_string(&manifest).unwrap();
    assert!(vmlet_ok(&machine, &["stop", "web"]).contains("web: runStrategy Halted"));
    let after = std::fs::read_to_string(&manifest).unwrap();
    assert_eq!(after, before.replace("runStrategy: Always", "runStrategy: Halted"));
    machine.wait_status("web", &["Stopped"], WAIT);
    assert!(!pings(&machine, "10.111.0.2"));
    let error = output_within(vmlet(&machine).args(["pause", "web"]), WAIT).unwrap();
    let stderr = String::from_utf8_lossy(&error.stderr);
    assert!(stderr.contains("the VM web is not running"), "{stderr}");

    // start: Halted becomes Always again, and the guest is back.
    assert!(vmlet_ok(&machine, &["start", "web"]).contains("web: runStrategy Always"));
    machine.wait_lease("web");
    poll_until("ping after start", WAIT, Duration::from_millis(500), || {
        pings(&machine, "10.111.0.2").then_some(())
    })
    .unwrap();
    let error = output_within(vmlet(&machine).args(["status", "nosuch"]), WAIT).unwrap();
    assert!(String::from_utf8_lossy(&error.stderr).contains("there is no VM default/nosuch"));
}

/// `vmlet validate` gives `vmlet-handler validate`'s verdicts and exit status: the field path of each refusal, the
/// defaults-applied VM on request.
#[test]
fn validate_gives_the_checks_verdict() {
    let corpus = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../api/tests/corpus"));
    let valid = corpus.join("minimal.yaml");
    let refused = corpus.join("refused-gpu.yaml");

    let output = output_within(Command::new(binary("vmlet")).arg("validate").arg(&valid), WAIT).unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("minimal: valid"), "{stdout}");

    let output = output_within(
        Command::new(binary("vmlet"))
            .args(["validate", "-o", "yaml"])
            .arg(&valid),
        WAIT,
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(
        stdout.contains("runStrategy: Always") && stdout.contains("type: q35"),
        "{stdout}"
    );

    let output = output_within(
        Command::new(binary("vmlet")).arg("validate").arg(&valid).arg(&refused),
        WAIT,
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("spec.template.spec.domain.devices.gpus: not supported by vmlet"),
        "{stdout}"
    );
}

/// Types `line` on the guest's serial console, and leaves as `vmlet console` does: half-closed, so that QEMU reads
/// it all before it hangs up.
fn type_on_console(machine: &Machine, name: &str, line: &str) {
    use std::io::{Read, Write};
    let mut console = std::os::unix::net::UnixStream::connect(machine.pod_dir(name).join("run/console.sock")).unwrap();
    console.write_all(format!("{line}\r").as_bytes()).unwrap();
    console.shutdown(std::net::Shutdown::Write).unwrap();
    console.set_read_timeout(Some(WAIT)).unwrap();
    let _ = console.read_to_end(&mut Vec::new());
}

/// A Manual VM through the verbs: `start` and `restart` ask the handler; `stop --grace-period` and `stop --force`
/// end the guest sooner than its own grace period (600 s here, longer than any wait of the test), the first after a
/// power button press it ignores; `logs -f` keeps printing what the launcher logs.
#[test]
fn manual_vms_stops_sooner_than_the_grace_period_and_followed_logs() {
    let _guest = one_guest_at_a_time();
    let mut machine = Machine::new();
    machine.start_handler();
    let spec = GuestSpec {
        name: "web".into(),
        kernel_args: "vmlet.ping=10.111.0.1 vmlet.shell=1".into(),
        run_strategy: "Manual".into(),
        ..GuestSpec::new("bridge: {}", "10.111.0.1")
    };
    let manifest = spec.manifest().replace(
        "terminationGracePeriodSeconds: 60",
        "terminationGracePeriodSeconds: 600",
    );
    std::fs::write(machine.manifests().join("web.yaml"), manifest).unwrap();
    machine.wait_status("web", &["Stopped"], WAIT);

    assert!(vmlet_ok(&machine, &["start", "web"]).contains("web: asked to start"));
    machine.wait_lease("web");
    machine.wait_status("web", &["Running"], WAIT);

    // restart of a Manual VM: a stop, then a start, in a new pod.
    let shim = machine.shim_pid("web");
    assert!(vmlet_ok(&machine, &["restart", "web"]).contains("web: restarting"));
    poll_until("a new launcher", BOOT, Duration::from_millis(250), || {
        let record = std::fs::read_to_string(machine.pod_dir("web").join("shim.json")).ok()?;
        let record: serde_json::Value = serde_json::from_str(&record).ok()?;
        (record["pid"].as_u64()? as u32 != shim).then_some(())
    })
    .unwrap_or_else(|timeout| panic!("{timeout}\n{}", machine.diagnostics("web")));
    machine.wait_lease("web");

    // logs -f: what the launcher has logged, then what it logs next.
    let mut follow = vmlet(&machine);
    follow.args(["logs", "-f", "web"]);
    let follow = Child::spawn("vmlet logs -f", &mut follow);
    follow.wait_for_line("domain started", WAIT).unwrap();

    // The guest stops heeding the power button: only the grace period given to stop ends it.
    type_on_console(&machine, "web", "kill $(cat /run/acpid.pid); echo acpid-$((1+1))gone");
    poll_until("acpid gone", WAIT, Duration::from_millis(200), || {
        machine.console("web").contains("acpid-2gone").then_some(())
    })
    .unwrap();
    assert!(vmlet_ok(&machine, &["stop", "web", "--grace-period", "2"]).contains("web: asked to stop"));
    follow.wait_for_line("shutting the guest down", WAIT).unwrap();
    let ended = follow.wait_for_line("guest ended", WAIT).unwrap();
    assert!(ended.to_lowercase().contains("destroyed"), "{ended}");
    machine.wait_status("web", &["Stopped"], WAIT);
    drop(follow);

    // stop --force: destroyed at once.
    assert!(vmlet_ok(&machine, &["start", "web"]).contains("web: asked to start"));
    machine.wait_lease("web");
    machine.wait_status("web", &["Running"], WAIT);
    let mut follow = vmlet(&machine);
    follow.args(["logs", "-f", "web"]);
    let follow = Child::spawn("vmlet logs -f", &mut follow);
    assert!(vmlet_ok(&machine, &["stop", "web", "--force"]).contains("web: asked to stop"));
    let ended = follow.wait_for_line("guest ended", WAIT).unwrap();
    assert!(ended.to_lowercase().contains("destroyed"), "{ended}");
    machine.wait_status("web", &["Stopped"], WAIT);
}
