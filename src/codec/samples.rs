//! Deterministic market-like data for the codec's tests and its criterion benchmark (which
//! cannot see `#[cfg(test)]` code). Not part of the API.

/// xorshift64*: deterministic noise, no extra crate.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| (self.next_u64() >> 56) as u8).collect()
    }
}

/// `n` futures-like prices as f64 bytes: a multiplicative random walk rounded to 0.25 ticks.
pub fn prices(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut p = 4500.0f64;
    let mut out = Vec::with_capacity(8 * n);
    for _ in 0..n {
        p = (p * (1.0 + 2e-4 * rng.unit()) * 4.0).round() / 4.0;
        out.extend_from_slice(&p.to_le_bytes());
    }
    out
}

/// `n` bar volumes as i64 bytes: log-normal-ish lot counts around a few hundred.
pub fn volumes(n: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed);
    (0..n)
        .flat_map(|_| {
            let z = rng.unit() + rng.unit() + rng.unit();
            ((300.0 * z.exp()).round() as i64).to_le_bytes()
        })
        .collect()
}

/// `len` incompressible bytes.
pub fn random(len: usize, seed: u64) -> Vec<u8> {
    Rng(seed).bytes(len)
}
