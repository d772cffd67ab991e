//! Bounded waiting: every wait in a test ends, with an error that says what was awaited.

use std::fmt;
use std::time::{Duration, Instant};

/// A wait that ran out of time.
pub struct Timeout {
    what: String,
    after: Duration,
    /// Output of the process that was watched, if any, to show why the wait failed.
    output: Option<String>,
}

impl Timeout {
    pub(crate) fn new(what: impl Into<String>, after: Duration, output: Option<String>) -> Timeout {
        Timeout {
            what: what.into(),
            after,
            output,
        }
    }
}

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gave up after {:?} waiting for {}", self.after, self.what)?;
        if let Some(output) = &self.output {
            write!(f, "\n--- output so far ---\n{output}--- end of output ---")?;
        }
        Ok(())
    }
}

// `unwrap` and `expect` print `Debug`: make it as readable as `Display`.
impl fmt::Debug for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Timeout {}

/// Calls `check` every `interval` until it returns `Some`, for at most `timeout`.
pub fn poll_until<T>(
    what: impl Into<String>,
    timeout: Duration,
    interval: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, Timeout> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(Timeout::new(what, timeout, None));
        }
        std::thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_value_found() {
        let mut calls = 0;
        let found = poll_until("the third call", Duration::from_secs(5), Duration::ZERO, || {
            calls += 1;
            (calls == 3).then_some(calls)
        });
        assert_eq!(found.unwrap(), 3);
    }

    #[test]
    fn gives_up_and_says_what_it_waited_for() {
        let err = poll_until("nothing", Duration::from_millis(20), Duration::from_millis(5), || {
            None::<()>
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "gave up after 20ms waiting for nothing");
    }
}
