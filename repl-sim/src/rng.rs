//! The one PRNG a run draws from, with the small helpers the simulator needs. Everything random
//! in a run comes from here, so a seed replays bit for bit.

use repl_core::rng::Rng;

/// A seeded SplitMix64 stream with range and probability helpers.
#[derive(Debug, Clone)]
pub struct SimRng(Rng);

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        // Spread nearby seeds apart before the first draw.
        SimRng(Rng::new(seed ^ 0x5EED_0F7A_4DE4_u64.rotate_left(17)))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below(hi - lo + 1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// Roughly exponential with the given mean, capped at 20 means (tail latencies).
    pub fn exp(&mut self, mean: u64) -> u64 {
        let u = self.unit().max(1e-9);
        let x = -u.ln() * mean as f64;
        x.min(mean as f64 * 20.0) as u64
    }

    /// An index chosen with the given weights (the last one when all are zero).
    pub fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        if total == 0 {
            return weights.len().saturating_sub(1);
        }
        let mut x = self.below(total);
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }

    /// A uniformly chosen element.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            return None;
        }
        items.get(self.below(items.len() as u64) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_stay_in_range() {
        let mut r = SimRng::new(3);
        for _ in 0..1000 {
            assert!(r.below(7) < 7);
            let x = r.range(5, 9);
            assert!((5..=9).contains(&x));
            assert!(r.unit() < 1.0);
            assert!(r.weighted(&[0, 3, 0, 1]) % 2 == 1);
        }
        assert_eq!(r.below(0), 0);
    }
}
