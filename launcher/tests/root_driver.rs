//! [`DriverProcess`] against the built `vmlet-driver`, the real libvirt and QEMU, booting vmlet's test guest
//! (`images/guest/build.sh`) under the accelerator the launcher would choose (TCG on the CI machines). Needs root and
//! `cargo build -p vmlet-driver`.
//!
//! Each `root_*` test runs a scenario (an ignored test below) as PID 1 of a new PID namespace, as the launcher runs
//! in a pod, through `unshare --pid --fork --mount-proc --kill-child`; PID 1 splits with [`init`] as the launcher
//! does, and the test checks from outside that no QEMU survives. One guest runs at a time: the machines have two
//! cores.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use vmlet_domain::{Accel, Boot, ConsolePaths, DEFAULT_MACHINE, PausedReason};
use vmlet_testkit::{Child, ScratchDir, binary, output_within, poll_until, require_root, unique_name};

use tokio::sync::watch;
use vmlet_domain::DomainSpec;
use vmlet_launcher::driver::{DRIVER_ENV, DomainState, DriverError, DriverProcess, ShutOffReason, accel, init};

// How a root_* test tells its scenario what to use.
const RUN_DIR_ENV: &str = "VMLET_TEST_RUN_DIR";
const GUEST_DIR_ENV: &str = "VMLET_TEST_GUEST_DIR";
const DOMAIN_ENV: &str = "VMLET_TEST_DOMAIN";

/// Under TCG on two busy cores the kernel prints within about 10 s; much more means it hangs.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Without a NIC, the test guest waits 5 s for one before it powers off.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(90);
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(300);
/// libvirt gives a QEMU that ignores SIGTERM 10 s before SIGKILL, and waits as long for a zombie; a reaped QEMU
/// stops in well under a second.
const DESTROY_BOUND: Duration = Duration::from_secs(5);
const RUNNING_LINE: &str = "scenario: the guest is running";

static ONE_GUEST: Mutex<()> = Mutex::new(());

#[test]
fn root_guest_lifecycle() {
    require_root();
    let _one_guest = ONE_GUEST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let run_dir = ScratchDir::new();
    let name = unique_name();
    let mut scenario = start_scenario("scenario_lifecycle", &run_dir, &name);
    let status = scenario.wait_exit(SCENARIO_TIMEOUT).unwrap();
    // A scenario that matched no test would also succeed.
    assert!(
        status.success() && scenario.output().contains("1 passed"),
        "the scenario failed ({status}):\n{}",
        scenario.output()
    );
    assert_eq!(qemu_pids(&name), Vec::<u32>::new(), "QEMU outlived the scenario");
}

#[test]
fn root_qemu_dies_with_the_launcher() {
    require_root();
    let _one_guest = ONE_GUEST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let run_dir = ScratchDir::new();
    let name = unique_name();
    let mut scenario = start_scenario("scenario_running_guest", &run_dir, &name);
    scenario.wait_for_line(RUNNING_LINE, SCENARIO_TIMEOUT).unwrap();
    assert_eq!(qemu_pids(&name).len(), 1, "one QEMU runs the guest");

    // unshare's child is the namespace's PID 1; the launcher proper is the child of that which is not QEMU.
    let init = only(children(scenario.pid()));
    let launcher = only(children(init).into_iter().filter(|&pid| !is_qemu(pid)).collect());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(launcher as i32), Signal::SIGKILL).unwrap();
    scenario.wait_exit(Duration::from_secs(10)).unwrap();
    poll_until(
        "QEMU to die with the launcher",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || qemu_pids(&name).is_empty().then_some(()),
    )
    .unwrap();
}

#[test]
#[ignore = "a scenario: root_guest_lifecycle runs it in a PID namespace"]
fn scenario_lifecycle() {
    run_scenario(|env| async move {
        let accel = accel::choose().unwrap();
        let spec = env.spec(accel, "console=ttyS0 panic=-1");
        let driver = DriverProcess::spawn().unwrap();
        let domain = driver.start(&spec, &env.run_dir, &test_cache_dir()).await.unwrap();
        let mut states = domain.watch_state();
        assert_eq!(*states.borrow(), DomainState::Running);
        wait_for_console(
            spec.console.as_ref().expect("the test guest has a console"),
            "Linux version",
        );
        wait_for_console(
            spec.console.as_ref().expect("the test guest has a console"),
            "VMLET-GUEST init",
        );
        let again = driver.start(&spec, &env.run_dir, &test_cache_dir()).await;
        assert!(matches!(again, Err(DriverError::Failed(_))), "{:?}", again.err());

        domain.pause().await.unwrap();
        wait_for_state(&mut states, DomainState::Paused(PausedReason::User)).await;
        domain.resume().await.unwrap();
        wait_for_state(&mut states, DomainState::Running).await;

        // The test guest runs no ACPI daemon and ignores the button: that the request is accepted is all to check.
        domain.shutdown().await.unwrap();
        let destroying = Instant::now();
        domain.destroy().await.unwrap();
        assert!(
            destroying.elapsed() < DESTROY_BOUND,
            "destroy took {:?}",
            destroying.elapsed()
        );
        wait_for_state(&mut states, DomainState::ShutOff(ShutOffReason::Destroyed)).await;
        domain.destroy().await.unwrap();
        assert_no_qemu_in_this_namespace();
        driver.stop().await;
        assert!(states.changed().await.is_err(), "the states end with the driver");
        assert!(matches!(domain.pause().await, Err(DriverError::Gone)));

        // Defined again under the same name by a new driver, the guest now powers itself off; the driver sees QEMU go.
        let spec = env.spec(accel, "console=ttyS0 panic=-1 vmlet.poweroff=1");
        let driver = DriverProcess::spawn().unwrap();
        let domain = driver.start(&spec, &env.run_dir, &test_cache_dir()).await.unwrap();
        let mut states = domain.watch_state();
        let stopped = tokio::time::timeout(POWEROFF_TIMEOUT, states.wait_for(|state| state.is_stopped()))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the guest did not power off\nconsole:\n{}",
                    console_log(spec.console.as_ref().expect("the test guest has a console"))
                )
            })
            .map(|state| *state)
            .unwrap();
        assert_eq!(stopped, DomainState::ShutOff(ShutOffReason::Shutdown));
        assert!(
            console_log(spec.console.as_ref().expect("the test guest has a console")).contains("VMLET-GUEST ready")
        );
        assert_no_qemu_in_this_namespace();
        driver.stop().await;

        // A driver whose stdin closes destroys what still runs.
        let spec = env.spec(accel, "console=ttyS0 panic=-1");
        let driver = DriverProcess::spawn().unwrap();
        driver.start(&spec, &env.run_dir, &test_cache_dir()).await.unwrap();
        driver.stop().await;
        assert_no_qemu_in_this_namespace();
    });
}

#[test]
#[ignore = "a scenario: root_qemu_dies_with_the_launcher runs it in a PID namespace, then kills it"]
fn scenario_running_guest() {
    run_scenario(|env| async move {
        let spec = env.spec(accel::choose().unwrap(), "console=ttyS0 panic=-1");
        let driver = DriverProcess::spawn().unwrap();
        let _domain = driver.start(&spec, &env.run_dir, &test_cache_dir()).await.unwrap();
        wait_for_console(
            spec.console.as_ref().expect("the test guest has a console"),
            "VMLET-GUEST init",
        );
        println!("{RUNNING_LINE}");
        tokio::time::sleep(SCENARIO_TIMEOUT).await;
        panic!("not killed within {SCENARIO_TIMEOUT:?}");
    });
}

/// Runs a scenario the way the launcher runs: PID 1 of the namespace runs this test again as its child, under
/// [`init`], and the child runs `body` on a runtime like the launcher's, whose thread spawns the driver.
fn run_scenario<F: Future<Output = ()>>(body: impl FnOnce(ScenarioEnv) -> F) {
    if std::env::var_os(RUN_DIR_ENV).is_none() {
        eprintln!("skipped: scenarios run only inside the root_* tests");
        return;
    }
    if init::is_pid1() {
        assert_eq!(init::run_self_as_child().unwrap(), 0, "the scenario failed");
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_test_writer()
        .try_init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(body(ScenarioEnv::from_env()));
}

/// What a scenario gets from the test that starts it.
struct ScenarioEnv {
    run_dir: PathBuf,
    guest_dir: PathBuf,
    domain: String,
}

impl ScenarioEnv {
    fn from_env() -> ScenarioEnv {
        let var = |name| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
        ScenarioEnv {
            run_dir: var(RUN_DIR_ENV).into(),
            guest_dir: var(GUEST_DIR_ENV).into(),
            domain: var(DOMAIN_ENV),
        }
    }

    /// The test guest, booted directly, with no disk and no NIC.
    fn spec(&self, accel: Accel, cmdline: &str) -> DomainSpec {
        DomainSpec {
            name: self.domain.clone(),
            uuid: uuid::Uuid::from_u128(0x766d_6c65_7400_4000_8000_0000_0000_0001),
            vcpus: 1,
            memory_mib: 256,
            machine: DEFAULT_MACHINE.to_owned(),
            accel,
            firmware: vmlet_domain::Firmware::Bios,
            boot: Boot::Kernel {
                kernel: self.guest_dir.join("vmlinux"),
                initrd: Some(self.guest_dir.join("initramfs.cpio.gz")),
                cmdline: cmdline.to_owned(),
            },
            disks: Vec::new(),
            interfaces: Vec::new(),
            console: Some(vmlet_launcher::vm_domain::console(&vmlet_control::RunDir::new(
                &self.run_dir,
            ))),
            platform: vmlet_domain::Platform::default(),
            vnc_socket: None,
            guest_agent_socket: None,
        }
    }
}

/// Starts `scenario` of this test binary as PID 1 of a new PID namespace, with its own /proc.
fn start_scenario(scenario: &str, run_dir: &ScratchDir, domain: &str) -> Child {
    let test_binary = std::env::current_exe().unwrap();
    let mut command = Command::new("unshare");
    command
        .args(["--pid", "--fork", "--mount-proc", "--kill-child", "--"])
        .arg(test_binary)
        .args(["--exact", scenario])
        .args(["--include-ignored", "--nocapture", "--test-threads=1"])
        .env(RUN_DIR_ENV, run_dir.path())
        .env(GUEST_DIR_ENV, test_guest())
        .env(DOMAIN_ENV, domain)
        .env(DRIVER_ENV, binary("vmlet-driver"));
    Child::spawn(scenario, &mut command)
}

/// The test guest's directory, built (or found built) by `images/guest/build.sh` once per test process.
fn test_guest() -> &'static Path {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/guest/build.sh");
        // A first build downloads a kernel package; later ones find it cached.
        let output = output_within(&mut Command::new(&script), Duration::from_secs(900))
            .unwrap_or_else(|err| panic!("{}: {err}", script.display()));
        assert!(
            output.status.success(),
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let dir = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
        assert!(dir.join("vmlinux").is_file(), "{} printed {stdout:?}", script.display());
        dir
    })
}

/// QEMU's capabilities, cached across test runs as they are across pods on a node.
fn test_cache_dir() -> PathBuf {
    let cache_root = std::env::var_os("VMLET_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache/vmlet")
        });
    cache_root.join("qemu-caps")
}

fn console_log(console: &ConsolePaths) -> String {
    std::fs::read(&console.log)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// Waits for the guest to write `text` to its console; a guest that does not is reported, and destroyed by its
/// driver when the scenario's runtime drops it.
fn wait_for_console(console: &ConsolePaths, text: &str) {
    let found = poll_until(
        format!("{text:?} on the console"),
        CONSOLE_TIMEOUT,
        Duration::from_millis(50),
        || console_log(console).contains(text).then_some(()),
    );
    if let Err(timeout) = found {
        panic!("{timeout}\nconsole:\n{}", console_log(console));
    }
}

async fn wait_for_state(states: &mut watch::Receiver<DomainState>, expected: DomainState) {
    tokio::time::timeout(Duration::from_secs(5), states.wait_for(|state| *state == expected))
        .await
        .unwrap_or_else(|_| panic!("the watched state did not become {expected:?}"))
        .unwrap();
}

/// QEMU exits and is reaped: no process of this namespace, zombies included, is a QEMU.
fn assert_no_qemu_in_this_namespace() {
    let qemu_in_proc = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
            .any(is_qemu)
    };
    poll_until(
        "QEMU to be reaped",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || (!qemu_in_proc()).then_some(()),
    )
    .unwrap();
}

/// The children of process `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let listed = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        children.extend(listed.split_whitespace().map(|child| child.parse::<u32>().unwrap()));
    }
    children
}

fn only(pids: Vec<u32>) -> u32 {
    assert_eq!(pids.len(), 1, "expected one process, found {pids:?}");
    pids[0]
}

fn is_qemu(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.starts_with("qemu-system"))
}

/// The live QEMU processes running domain `name`, found by their command line.
fn qemu_pids(name: &str) -> Vec<u32> {
    let guest_arg = format!("guest={name},");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|&b| b == 0).map(String::from_utf8_lossy);
        let is_qemu = args.next().is_some_and(|program| program.contains("qemu-system"));
        if is_qemu && args.any(|arg| arg.starts_with(&guest_arg)) {
            pids.push(pid);
        }
    }
    pids
}
