//! The handler's command line as its Deployment, DaemonSet or a shell sets it.
#![allow(clippy::unwrap_used)]

use std::process::Command;

/// `VMLET_LOG_JSON` takes any true or false value, as every vmlet program reads it.
#[test]
fn json_logging_takes_any_true_or_false_value() {
    let handler = env!("CARGO_BIN_EXE_vmlet-handler");
    for value in ["1", "true", "yes", "on", "0", "false", "no", ""] {
        let output = Command::new(handler)
            .arg("crd")
            .env("VMLET_LOG_JSON", value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{value:?}: {stderr}");
        assert!(String::from_utf8_lossy(&output.stdout).contains("kind: CustomResourceDefinition"));
    }
}
