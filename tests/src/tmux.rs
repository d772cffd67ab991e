//! A tmux server of a test's own, to drive an interactive program (`vmlet console`) as a person at a terminal
//! would: keys sent, the screen read back.

use std::process::Command;
use std::time::Duration;

use crate::{poll_until, run, unique_name};

/// A tmux server of the test's own, killed when the test ends.
pub struct Tmux {
    socket: String,
}

impl Default for Tmux {
    fn default() -> Tmux {
        Tmux::new()
    }
}

impl Tmux {
    pub fn new() -> Tmux {
        Tmux { socket: unique_name() }
    }

    fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command.args(["-L", &self.socket]);
        command
    }

    /// Runs `shell_command` in the session's only pane (a new session the first time, the same pane afterwards).
    pub fn start(&self, shell_command: &str, first: bool) {
        if first {
            run(self
                .command()
                .args(["new-session", "-d", "-s", "t", "-x", "160", "-y", "50", shell_command]));
        } else {
            run(self.command().args(["respawn-pane", "-k", "-t", "t", shell_command]));
        }
    }

    pub fn keys(&self, keys: &[&str]) {
        run(self.command().args(["send-keys", "-t", "t"]).args(keys));
    }

    pub fn screen(&self) -> String {
        run(self.command().args(["capture-pane", "-p", "-t", "t", "-S", "-200"]))
    }

    pub fn wait_for(&self, text: &str, within: Duration) -> String {
        poll_until(format!("{text:?} in tmux"), within, Duration::from_millis(200), || {
            let screen = self.screen();
            screen.contains(text).then_some(screen)
        })
        .unwrap_or_else(|timeout| panic!("{timeout}\n--- screen ---\n{}", self.screen()))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").output();
    }
}
