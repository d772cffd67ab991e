//! The boot benchmarks' tables: one column per phase, rows of the median, minimum and maximum over the runs, in ms.

use std::time::Duration;

use crate::stats::Latency;

/// What a column shows of one run, in ms; `None` where the run has no such phase.
pub type Column<T> = fn(&T) -> Option<f64>;

const LABEL_WIDTH: usize = 24;

pub fn print_header(columns: &[&str]) {
    let header: String = columns.iter().map(|c| format!(" {c:>10}")).collect();
    println!("{:<LABEL_WIDTH$}{header}", "");
}

/// Three rows, `LABEL median`, `LABEL min` and `LABEL max`, of `runs`.
pub fn print_spread<T>(label: &str, runs: &[T], columns: &[Column<T>]) {
    let spreads: Vec<Option<Latency>> = columns.iter().map(|column| spread_ms(runs, column)).collect();
    type Pick = fn(&Latency) -> f64;
    let picks: [(&str, Pick); 3] = [
        ("median", |l| l.median_us),
        ("min", |l| l.min_us),
        ("max", |l| l.max_us),
    ];
    for (name, pick) in picks {
        let cells: Vec<Option<f64>> = spreads.iter().map(|s| s.as_ref().map(|l| pick(l) / 1e3)).collect();
        print_row(&format!("{label} {name}"), &cells);
    }
}

/// One row of values in ms.
pub fn print_row(label: &str, cells: &[Option<f64>]) {
    let cells: String = cells
        .iter()
        .map(|ms| ms.map_or_else(|| format!(" {:>10}", "-"), |ms| format!(" {ms:>10.0}")))
        .collect();
    println!("{label:<LABEL_WIDTH$}{cells}");
}

/// Median, minimum and maximum of one column over the runs that have it (ms), as a [`Latency`].
pub fn spread_ms<T>(runs: &[T], column: impl Fn(&T) -> Option<f64>) -> Option<Latency> {
    let samples: Vec<Duration> = runs
        .iter()
        .filter_map(column)
        .map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1e3))
        .collect();
    Latency::of(&samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_only_the_runs_that_have_the_column() {
        let runs = [Some(30.0), None, Some(10.0), Some(20.0)];
        let spread = spread_ms(&runs, |ms| *ms).unwrap();
        assert_eq!(spread.samples, 3);
        assert_eq!((spread.median_us, spread.min_us, spread.max_us), (20e3, 10e3, 30e3));
        assert!(spread_ms(&[None::<f64>], |ms| *ms).is_none());
    }
}
