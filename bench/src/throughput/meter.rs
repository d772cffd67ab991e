//! The measured window of a transfer, and summaries of several: pure logic, fed with byte counts and times.

use std::time::{Duration, Instant};

use serde::Serialize;

/// The part of a transfer that is measured: it opens `warmup` after the first byte (past slow start, and past any
/// data queued before the connection was accepted) and lasts `length`.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub warmup: Duration,
    pub length: Duration,
}

/// The bytes counted in a window and how long it lasted.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Transfer {
    pub bytes: u64,
    pub seconds: f64,
}

impl Transfer {
    pub fn mbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds / 1e6
    }
}

/// What one count meant to the window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reading {
    /// Before the window, or inside it.
    Outside,
    /// This count opened the window.
    Opened,
    /// This count closed the window: the measurement.
    Closed(Transfer),
}

/// Measures one transfer from the running byte counts seen during it: the window opens at the first count made
/// `warmup` or more after the first byte, and closes at the first count made `length` or more after it opened. Only
/// the bytes counted after the opening count, and the time between the two counts, are measured.
pub struct Meter {
    window: Window,
    first: Option<Instant>,
    opened: Option<(Instant, u64)>,
}

impl Meter {
    pub fn new(window: Window) -> Meter {
        Meter {
            window,
            first: None,
            opened: None,
        }
    }

    /// Records that `total` bytes had gone through at `at`.
    pub fn observe(&mut self, at: Instant, total: u64) -> Reading {
        if total == 0 {
            return Reading::Outside;
        }
        let first = *self.first.get_or_insert(at);
        match self.opened {
            None if at.duration_since(first) >= self.window.warmup => {
                self.opened = Some((at, total));
                Reading::Opened
            }
            None => Reading::Outside,
            Some((opened_at, opened_total)) => {
                let elapsed = at.duration_since(opened_at);
                if elapsed >= self.window.length && elapsed > Duration::ZERO {
                    Reading::Closed(Transfer {
                        bytes: total - opened_total,
                        seconds: elapsed.as_secs_f64(),
                    })
                } else {
                    Reading::Outside
                }
            }
        }
    }
}

/// The median and range of a set of values.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    /// `None` for no values. The median of an even count is the mean of the middle two.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let mut sorted: Vec<f64> = values.into_iter().collect();
        sorted.sort_by(f64::total_cmp);
        let (&min, &max) = (sorted.first()?, sorted.last()?);
        let middle = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[middle]
        } else {
            (sorted[middle - 1] + sorted[middle]) / 2.0
        };
        Some(Spread { median, min, max })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(warmup_ms: u64, length_ms: u64) -> Window {
        Window {
            warmup: Duration::from_millis(warmup_ms),
            length: Duration::from_millis(length_ms),
        }
    }

    #[test]
    fn measures_only_the_window_after_the_warmup() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut meter = Meter::new(window(500, 1000));
        assert_eq!(meter.observe(at(0), 0), Reading::Outside, "no byte yet");
        // 10 MB queued before the connection was accepted arrive at once, then 1 MB every 100 ms.
        assert_eq!(meter.observe(at(100), 10_000_000), Reading::Outside);
        assert_eq!(meter.observe(at(400), 11_000_000), Reading::Outside);
        assert_eq!(meter.observe(at(600), 12_000_000), Reading::Opened);
        assert_eq!(meter.observe(at(1500), 21_000_000), Reading::Outside);
        let Reading::Closed(transfer) = meter.observe(at(1600), 22_000_000) else {
            panic!("the window closes a second after it opened");
        };
        assert_eq!(transfer.bytes, 10_000_000);
        assert!((transfer.seconds - 1.0).abs() < 1e-9, "{transfer:?}");
        assert!((transfer.mbit_per_s() - 80.0).abs() < 1e-6);
    }

    #[test]
    fn without_warmup_the_window_opens_at_the_first_count() {
        let start = Instant::now();
        let mut meter = Meter::new(window(0, 200));
        assert_eq!(meter.observe(start, 262_144), Reading::Opened);
        assert_eq!(meter.observe(start, 524_288), Reading::Outside, "no time has passed");
        assert_eq!(
            meter.observe(start + Duration::from_millis(250), 1_262_144),
            Reading::Closed(Transfer {
                bytes: 1_000_000,
                seconds: 0.25
            })
        );
    }

    #[test]
    fn summarises_values() {
        assert_eq!(Spread::of([]), None);
        assert_eq!(
            Spread::of([30.0, 10.0, 20.0]),
            Some(Spread {
                median: 20.0,
                min: 10.0,
                max: 30.0
            })
        );
        assert_eq!(Spread::of([4.0, 1.0, 2.0, 100.0]).unwrap().median, 3.0);
    }
}
