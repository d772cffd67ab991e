//! How vmlet's programs log: `tracing` events to stderr, filtered by `VMLET_LOG` (`info` unless it says otherwise),
//! as plain text (coloured only for a person at a terminal, so `kubectl logs` and log files get none) or as JSON
//! lines.

use std::io::IsTerminal;

/// The filter, in `tracing_subscriber::EnvFilter`'s syntax (`info,vmlet_dhcp=debug`).
pub const FILTER_ENV: &str = "VMLET_LOG";
/// Asks for JSON lines; child processes inherit it, so a launcher's driver logs as the launcher does.
pub const JSON_ENV: &str = "VMLET_LOG_JSON";

/// Installs the process's subscriber; call it once, first thing.
pub fn init(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(FILTER_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Whether [`JSON_ENV`] asks for JSON, read as a command-line flag's environment variable is: anything but an empty
/// or false-like value (`0`, `no`, `false`, `off`, ...) turns it on.
pub fn json_from_env() -> bool {
    std::env::var(JSON_ENV).is_ok_and(|value| is_true(&value))
}

fn is_true(value: &str) -> bool {
    !matches!(
        value.to_ascii_lowercase().as_str(),
        "" | "0" | "n" | "no" | "f" | "false" | "off"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn false_like_values_are_off() {
        for off in ["", "0", "no", "False", "OFF", "n", "f"] {
            assert!(!is_true(off), "{off:?}");
        }
        for on in ["1", "yes", "true", "on", "json"] {
            assert!(is_true(on), "{on:?}");
        }
    }
}
