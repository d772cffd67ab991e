//! `vmlet-launcher connect`: the bridge between an exec's streams and a run directory's socket, run for real.

#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};

/// The program bridges for real: what goes in on stdin reaches the socket, and the socket's answer comes out.
#[test]
fn stdin_and_stdout_become_the_sockets() {
    let dir = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(dir.path().join("control.sock")).unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut stream), &mut line).unwrap();
        std::io::Write::write_all(&mut stream, format!("got {line}").as_bytes()).unwrap();
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmlet-launcher"))
        .args(["connect", "control", "--run-dir"])
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"hello\n").unwrap();
    let output = child.wait_with_output().unwrap();
    server.join().unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout), "got hello\n");
}

#[test]
fn a_missing_socket_says_the_vm_may_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_vmlet-launcher"))
        .args(["connect", "vnc", "--run-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("vnc.sock") && stderr.contains("is the VM running?"),
        "{stderr}"
    );
}

#[test]
fn a_guest_connection_needs_its_port() {
    let output = Command::new(env!("CARGO_BIN_EXE_vmlet-launcher"))
        .args(["connect", "guest"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--port"), "{stderr}");
}
