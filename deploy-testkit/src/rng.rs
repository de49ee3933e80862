//! [`SeededRng`]: a small, fast generator whose whole sequence follows from one seed, so a failing chaos round or
//! simulation replays exactly from the seed it prints.

use std::time::Duration;

/// SplitMix64 (Steele, Lea and Flood, 2014): 64 bits of state, every seed a full-period sequence. Not for secrets.
#[derive(Debug, Clone)]
pub struct SeededRng {
    state: u64,
}

impl SeededRng {
    /// The generator of `seed`.
    #[must_use]
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0), without modulo bias worth speaking of for the small `n` of tests.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        // Lemire's multiply-shift: the high half of a 64×64-bit product.
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// An index into a collection of `len` items (0 when it is empty).
    pub fn index(&mut self, len: usize) -> usize {
        usize::try_from(self.below(len as u64)).unwrap_or(0)
    }

    /// True with probability `p` (clamped to 0..=1).
    pub fn chance(&mut self, p: f64) -> bool {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        unit < p.clamp(0.0, 1.0)
    }

    /// A duration in `low..=high`, to the millisecond (`low` when `high` is not above it).
    pub fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let (lo, hi) = (low.as_millis() as u64, high.as_millis() as u64);
        if hi <= lo {
            return low;
        }
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_seed_one_sequence_and_values_stay_in_range() {
        let (mut a, mut b, mut c) = (SeededRng::new(7), SeededRng::new(7), SeededRng::new(8));
        let first: Vec<u64> = (0..16).map(|_| a.next_u64()).collect();
        assert_eq!(first, (0..16).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert_ne!(first, (0..16).map(|_| c.next_u64()).collect::<Vec<_>>());
        let mut seen = [0u32; 5];
        for _ in 0..5000 {
            let i = a.index(5);
            seen[i] += 1;
            let d = a.between(Duration::from_millis(10), Duration::from_millis(20));
            assert!((10..=20).contains(&d.as_millis()), "{d:?}");
        }
        // Each of five values comes up about a fifth of the time.
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
        assert_eq!(a.below(0), 0);
        assert!(!a.chance(0.0) && a.chance(1.0));
    }
}
