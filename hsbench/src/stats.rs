//! Latency samples and the figures printed from them.

use std::time::Duration;

/// The outcome of one measured phase (or several, absorbed into one).
#[derive(Default)]
pub struct Phase {
    /// Latency of every successful request.
    pub latencies: Vec<Duration>,
    /// Requests that failed or got a non-2xx answer.
    pub errors: u64,
    /// Wall time of the phase.
    pub elapsed: Duration,
}

impl Phase {
    /// Adds another phase of the same workload and target.
    pub fn absorb(&mut self, other: Phase) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        self.elapsed += other.elapsed;
    }

    pub fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile (0..=1) in milliseconds, nearest-rank.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        let ms: Vec<f64> = self
            .latencies
            .iter()
            .map(|d| d.as_secs_f64() * 1000.0)
            .collect();
        quantile(&ms, q)
    }
}

/// The `q` quantile (0..=1) of `samples`, nearest-rank; NaN when there are none. Samples may
/// be negative (a difference of two clocks' readings).
pub fn quantile(samples: &[f64], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Milliseconds from `earlier` to `later`, negative when `later` came first.
pub fn signed_ms(earlier: std::time::Instant, later: std::time::Instant) -> f64 {
    if later >= earlier {
        (later - earlier).as_secs_f64() * 1000.0
    } else {
        -((earlier - later).as_secs_f64() * 1000.0)
    }
}

/// Prints one workload's direct and proxied phases and how they compare.
pub fn report(workload: &str, direct: &Phase, proxied: &Phase) {
    println!("\n{workload}");
    println!(
        "  {:<12} {:>9} {:>7} {:>11} {:>9} {:>9}",
        "target", "requests", "errors", "req/s", "p50 ms", "p99 ms"
    );
    for (name, phase) in [("synapse", direct), ("hungryserv", proxied)] {
        println!(
            "  {:<12} {:>9} {:>7} {:>11.1} {:>9.3} {:>9.3}",
            name,
            phase.latencies.len(),
            phase.errors,
            phase.throughput(),
            phase.quantile_ms(0.5),
            phase.quantile_ms(0.99),
        );
    }
    println!(
        "  ratio: throughput {:.3} (hungryserv/synapse), p50 added {:+.3} ms, p99 added {:+.3} ms",
        proxied.throughput() / direct.throughput(),
        proxied.quantile_ms(0.5) - direct.quantile_ms(0.5),
        proxied.quantile_ms(0.99) - direct.quantile_ms(0.99),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let phase = Phase {
            latencies: (1..=100).map(Duration::from_millis).collect(),
            errors: 0,
            elapsed: Duration::from_secs(1),
        };
        assert_eq!(phase.quantile_ms(0.5), 50.0);
        assert_eq!(phase.quantile_ms(0.99), 99.0);
        assert_eq!(phase.throughput(), 100.0);
    }

    #[test]
    fn quantiles_of_signed_samples() {
        let samples: Vec<f64> = (-50..50).map(f64::from).collect();
        assert_eq!(quantile(&samples, 0.5), -1.0);
        assert_eq!(quantile(&samples, 0.99), 48.0);
        assert!(quantile(&[], 0.5).is_nan());
        let now = std::time::Instant::now();
        let later = now + Duration::from_millis(3);
        assert!((signed_ms(now, later) - 3.0).abs() < 1e-9);
        assert!((signed_ms(later, now) + 3.0).abs() < 1e-9);
    }
}
