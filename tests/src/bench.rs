//! What every benchmark shares: parsing its options (with `--help`) and
//! the statistics it prints (percentiles, medians, rates).
//!
//! Owns nothing that runs a system under test. Percentiles are
//! nearest-rank, so that p99 of 100 samples is the 99th smallest.

use std::time::Duration;

use clap::Parser;

/// Parses a benchmark's options from its command line. `cargo bench`
/// passes `--bench` to every benchmark binary; it is accepted and ignored.
/// A bad option prints the usage and exits 2, `--help` exits 0.
pub fn args<T: Parser>() -> T {
    T::parse_from(std::env::args().filter(|a| a != "--bench"))
}

/// Options most benchmarks take.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// Interleaved runs per point; the median is reported and every run's
    /// figures go to stderr.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub repeat: u64,
    /// Seconds each timed run lasts.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: u64,
    /// Concurrent clients per point, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub clients: Vec<usize>,
}

/// The nearest-rank percentile `p` (0 to 1) of a sorted slice; `None` when empty.
pub use nas_client::drill::percentile;

/// Latencies of one run, sorted, with the run's length.
pub struct Latencies {
    sorted: Vec<Duration>,
    secs: f64,
}

impl Latencies {
    pub fn new(mut all: Vec<Duration>, secs: f64) -> Latencies {
        all.sort_unstable();
        Latencies { sorted: all, secs }
    }

    /// Completed operations per second.
    pub fn per_sec(&self) -> f64 {
        self.sorted.len() as f64 / self.secs
    }

    /// Nearest-rank percentile; zero for a run that completed nothing.
    pub fn at(&self, p: f64) -> Duration {
        percentile(&self.sorted, p).unwrap_or_default()
    }
}

/// The element with the median `key` of several runs.
pub fn median_by<T>(mut runs: Vec<T>, key: impl Fn(&T) -> f64) -> T {
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let mid = runs.len() / 2;
    runs.swap_remove(mid)
}

/// The median of several figures (the upper one of an even count).
pub fn median(v: Vec<f64>) -> f64 {
    median_by(v, |x| *x)
}

/// Decimal megabytes per second.
pub fn mb_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// Milliseconds with two decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 1.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile::<u64>(&[], 0.5), None);
    }

    #[test]
    fn medians_pick_the_middle_run() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median_by(vec![(1, 9.0), (2, 1.0), (3, 5.0)], |r| r.1).0, 3);
        let l = Latencies::new(vec![Duration::from_millis(3), Duration::from_millis(1)], 2.0);
        assert_eq!(l.per_sec(), 1.0);
        assert_eq!(l.at(0.5), Duration::from_millis(1));
    }
}
