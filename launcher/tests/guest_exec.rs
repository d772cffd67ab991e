//! `vmlet-launcher guest-exec` and `guest-ping`, the launcher Pod's exec probes, run for real against a control
//! socket that answers as a launcher would.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output};

/// Answers one request on `dir`'s control socket with `answer` (the response's body, as JSON), and returns the
/// request.
fn answer_once(dir: &Path, answer: &'static str) -> std::thread::JoinHandle<serde_json::Value> {
    let listener = UnixListener::bind(dir.join("control.sock")).unwrap();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&mut stream).read_line(&mut line).unwrap();
        let request: serde_json::Value = serde_json::from_str(&line).unwrap();
        let response = format!("{{\"version\":1,\"id\":{},{answer}}}\n", request["id"]);
        stream.write_all(response.as_bytes()).unwrap();
        request
    })
}

fn launcher(dir: &Path, args: &[&str]) -> Output {
    let (command, rest) = args.split_first().unwrap();
    Command::new(env!("CARGO_BIN_EXE_vmlet-launcher"))
        .arg(command)
        .arg("--run-dir")
        .arg(dir)
        .args(rest)
        .output()
        .unwrap()
}

#[test]
fn guest_exec_exits_with_the_programs_status_and_output() {
    let dir = tempfile::tempdir().unwrap();
    let served = answer_once(
        dir.path(),
        r#""guest_exec":{"exit_code":3,"stdout":"out\n","stderr":"err\n"}"#,
    );
    let output = launcher(
        dir.path(),
        &["guest-exec", "--timeout-secs=4", "--", "cat", "/tmp/healthy"],
    );
    let request = served.join().unwrap();
    assert_eq!(request["command"], "guest_exec");
    assert_eq!(request["argv"], serde_json::json!(["cat", "/tmp/healthy"]));
    assert_eq!(request["timeout_secs"], 4);
    assert_eq!(output.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "err\n");
}

#[test]
fn guest_ping_passes_when_the_agent_answers_and_fails_with_one_line_when_not() {
    let dir = tempfile::tempdir().unwrap();
    let served = answer_once(
        dir.path(),
        r#""status":{"phase":"running","launcher_pid":1,"started_at":1,"uptime_secs":1}"#,
    );
    let output = launcher(dir.path(), &["guest-ping"]);
    assert_eq!(served.join().unwrap()["command"], "guest_ping");
    assert!(output.status.success(), "{output:?}");

    std::fs::remove_file(dir.path().join("control.sock")).unwrap();
    let served = answer_once(
        dir.path(),
        r#""error":{"kind":"failed","message":"no answer from the guest agent to guest-ping"}"#,
    );
    let output = launcher(dir.path(), &["guest-ping"]);
    served.join().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no answer from the guest agent"), "{stderr}");
}
