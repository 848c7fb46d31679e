//! A small hand-written PRNG: splitmix64 (Steele, Lea, Flood 2014), and the uniform draws the
//! initialisation uses. Only integer operations and one multiplication per draw, so any
//! implementation (NumPy included) can reproduce the same values bit for bit.

/// The splitmix64 generator.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64 { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`: the top 53 bits of the next value, times 2⁻⁵³.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[-√3·std, √3·std)`, a distribution of mean 0 and standard deviation `std`,
    /// rounded to f32.
    pub fn symmetric(&mut self, std: f64) -> f32 {
        ((2.0 * self.uniform() - 1.0) * 3f64.sqrt() * std) as f32
    }

    /// An integer in `0..n` (`n > 0`; modulo bias is irrelevant for tests and sampling).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_published_sequence() {
        // Seed 1234567: the reference values of the C implementation.
        let mut r = SplitMix64::new(1234567);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
        assert_eq!(r.next_u64(), 9817491932198370423);
    }
}
