//! Shell completion scripts come from the command line's own definitions, so every verb is in them.

#![allow(clippy::unwrap_used)]

use std::process::Command;

const VERBS: [&str; 15] = [
    "start",
    "stop",
    "restart",
    "pause",
    "unpause",
    "console",
    "vnc",
    "ssh",
    "scp",
    "port-forward",
    "list",
    "status",
    "logs",
    "completion",
    "validate",
];

#[test]
fn bash_and_zsh_completions_name_every_verb() {
    for shell in ["bash", "zsh"] {
        let output = Command::new(env!("CARGO_BIN_EXE_vmlet"))
            .args(["completion", shell])
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let script = String::from_utf8(output.stdout).unwrap();
        for verb in VERBS {
            assert!(script.contains(verb), "{shell} completion lacks {verb}");
        }
        assert!(
            script.contains("--grace-period") && script.contains("--proxy-only"),
            "{shell}"
        );
    }
    // bash itself reads the script.
    let status = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source <({} completion bash) && complete -p vmlet",
            env!("CARGO_BIN_EXE_vmlet")
        ))
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn kubectl_finds_the_same_program_under_its_plugin_name() {
    let output = Command::new(env!("CARGO_BIN_EXE_kubectl-vmlet"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("port-forward"));
}

#[test]
fn without_a_handler_standalone_mode_says_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_vmlet"))
        .arg("--manifests")
        .arg(dir.path())
        .args(["start", "web"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("vmlet: no vmlet-handler standalone runs on"),
        "{stderr}"
    );
}
