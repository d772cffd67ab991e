//! The launcher's command line as a pod's environment sets it.
#![allow(clippy::unwrap_used)]

use std::process::Command;

/// `VMLET_LOG_JSON` is read as every vmlet program reads it (`vmlet_log::json_from_env`: the node handler puts `1`
/// in a launcher pod's environment), whichever way the command line is parsed: `dhcp-serve` alone, or whole.
#[test]
fn json_logging_takes_any_true_or_false_value() {
    let launcher = env!("CARGO_BIN_EXE_vmlet-launcher");
    for value in ["1", "true", "yes", "on", "0", "false", "no", ""] {
        // No option given: the parser stops at the first missing one, after reading the environment.
        let output = Command::new(launcher)
            .arg("dhcp-serve")
            .env("VMLET_LOG_JSON", value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(
            stderr.contains("required arguments were not provided"),
            "{value:?}: {stderr}"
        );

        // A spec that does not exist: the launcher stops there, after parsing its command line.
        let output = Command::new(launcher)
            .args(["run", "--vm-spec", "/nonexistent/vm.yaml"])
            .env("VMLET_LOG_JSON", value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(stderr.contains("cannot read the VM spec"), "{value:?}: {stderr}");
    }
}
