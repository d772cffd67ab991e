//! Summaries of latency samples, and the memory a process holds.

use std::time::Duration;

use serde::Serialize;

/// Latency of a set of samples, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub median_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
    pub min_us: f64,
    pub max_us: f64,
}

impl Latency {
    /// `None` for no samples.
    pub fn of(samples: &[Duration]) -> Option<Latency> {
        let mut sorted: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        sorted.sort_by(f64::total_cmp);
        let (&min_us, &max_us) = (sorted.first()?, sorted.last()?);
        Some(Latency {
            samples: sorted.len(),
            median_us: percentile(&sorted, 50.0),
            p99_us: percentile(&sorted, 99.0),
            mean_us: sorted.iter().sum::<f64>() / sorted.len() as f64,
            min_us,
            max_us,
        })
    }
}

/// The nearest-rank percentile of sorted, non-empty samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The order of the contestants in round `round` (from 1): rotated by one each round, so that none always follows
/// the same other (and a busy spell of the machine hurts all alike). Two contestants swap every round.
pub fn taking_turns<T: Clone>(round: usize, contestants: &[T]) -> Vec<T> {
    let mut order = contestants.to_vec();
    if !contestants.is_empty() {
        order.rotate_left(round.saturating_sub(1) % contestants.len());
    }
    order
}

/// The ratio of two medians: how many times `slower` takes `faster`'s time.
pub fn ratio(slower: &Latency, faster: &Latency) -> f64 {
    slower.median_us / faster.median_us
}

/// Memory of a process, in KiB, from `/proc`: resident set (`VmRSS`), proportional set (`Pss`: shared pages
/// divided among the processes that map them) and the resident anonymous memory (`RssAnon`: heap, stacks, data
/// written to; what the process needs beyond its program's code and libraries).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Memory {
    pub rss_kib: u64,
    pub pss_kib: u64,
    pub anonymous_kib: u64,
}

impl Memory {
    pub fn of(pid: u32) -> std::io::Result<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
        let missing = |field| std::io::Error::other(format!("no {field} for process {pid}"));
        Ok(Memory {
            rss_kib: kib_field(&status, "VmRSS:").ok_or_else(|| missing("VmRSS"))?,
            pss_kib: kib_field(&rollup, "Pss:").ok_or_else(|| missing("Pss"))?,
            anonymous_kib: kib_field(&status, "RssAnon:").ok_or_else(|| missing("RssAnon"))?,
        })
    }
}

/// The value of a `Name:   1234 kB` line.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with(name))?;
    line[name.len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises_samples() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let latency = Latency::of(&samples).unwrap();
        assert_eq!((latency.median_us, latency.p99_us, latency.mean_us), (50.0, 99.0, 50.5));
        assert_eq!((latency.min_us, latency.max_us, latency.samples), (1.0, 100.0, 100));
        assert_eq!(Latency::of(&[]), None);
        assert_eq!(Latency::of(&[Duration::from_micros(7)]).unwrap().p99_us, 7.0);
    }

    #[test]
    fn contestants_take_turns() {
        assert_eq!(taking_turns(1, &["vmlet", "peer"]), ["vmlet", "peer"]);
        assert_eq!(taking_turns(2, &["vmlet", "peer"]), ["peer", "vmlet"]);
        assert_eq!(taking_turns(3, &["vmlet", "peer"]), ["vmlet", "peer"]);
        assert_eq!(taking_turns(2, &["a", "b", "c"]), ["b", "c", "a"]);
        assert_eq!(taking_turns(4, &["a", "b", "c"]), ["a", "b", "c"]);
        let of = |us: u64| Latency::of(&[Duration::from_micros(us)]).unwrap();
        assert_eq!(ratio(&of(300), &of(100)), 3.0);
    }

    #[test]
    fn reads_kib_fields() {
        let status = "Name:\tdnsmasq\nVmRSS:\t    2048 kB\nRssAnon:\t  512 kB\n";
        assert_eq!(kib_field(status, "VmRSS:"), Some(2048));
        assert_eq!(kib_field("Rss: 10 kB\nPss: 7 kB\nPss_Anon: 3 kB\n", "Pss:"), Some(7));
        assert_eq!(kib_field(status, "Pss:"), None);
    }

    #[test]
    fn reads_this_process_memory() {
        let memory = Memory::of(std::process::id()).unwrap();
        assert!(memory.rss_kib > 0 && memory.pss_kib > 0 && memory.pss_kib <= memory.rss_kib);
        assert!(memory.anonymous_kib > 0 && memory.anonymous_kib <= memory.rss_kib);
    }
}
