//! What a run asks for: the operations and their mix, the keyspace and how keys are drawn from
//! it (uniform or Zipf), and the values, which carry a checksum of their key and content so a
//! corrupt or misrouted value is caught when it is read back.
//!
//! Everything here is plain data and arithmetic, shared by every connection, so it is tested
//! without a server.

use std::fmt;
use std::str::FromStr;

/// The operations the load generator sends. Indexes the per-operation counters and histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadOp {
    Ping,
    Get,
    Set,
    Delete,
    Compute,
}

impl LoadOp {
    pub const COUNT: usize = 5;
    pub const ALL: [LoadOp; LoadOp::COUNT] = [
        LoadOp::Ping,
        LoadOp::Get,
        LoadOp::Set,
        LoadOp::Delete,
        LoadOp::Compute,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            LoadOp::Ping => "ping",
            LoadOp::Get => "get",
            LoadOp::Set => "set",
            LoadOp::Delete => "delete",
            LoadOp::Compute => "compute",
        }
    }

    fn parse(name: &str) -> Option<LoadOp> {
        LoadOp::ALL.into_iter().find(|op| op.name() == name)
    }
}

/// Relative weights of the operations, written `get:90,set:10`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    /// Cumulative weights in `LoadOp::ALL` order, so a draw is one comparison per operation.
    cumulative: [u32; LoadOp::COUNT],
}

impl Mix {
    /// A mix of one operation only.
    pub fn only(op: LoadOp) -> Mix {
        let mut weights = [0; LoadOp::COUNT];
        weights[op.index()] = 1;
        Mix::from_weights(weights)
    }

    fn from_weights(weights: [u32; LoadOp::COUNT]) -> Mix {
        let mut cumulative = [0; LoadOp::COUNT];
        let mut sum = 0;
        for (c, w) in cumulative.iter_mut().zip(weights) {
            sum += w;
            *c = sum;
        }
        Mix { cumulative }
    }

    fn total(&self) -> u32 {
        self.cumulative[LoadOp::COUNT - 1]
    }

    /// The operations with a non-zero weight.
    pub fn ops(&self) -> Vec<LoadOp> {
        let mut previous = 0;
        let mut ops = Vec::new();
        for (op, &c) in LoadOp::ALL.iter().zip(&self.cumulative) {
            if c > previous {
                ops.push(*op);
            }
            previous = c;
        }
        ops
    }

    /// Draws an operation.
    pub fn pick(&self, rng: &mut fastrand::Rng) -> LoadOp {
        let draw = rng.u32(0..self.total());
        let at = self.cumulative.iter().position(|&c| draw < c).unwrap_or(0);
        LoadOp::ALL[at]
    }
}

impl FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Mix, String> {
        let mut weights = [0u32; LoadOp::COUNT];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once(':')
                .ok_or_else(|| format!("`{part}` is not OP:WEIGHT (example: get:90,set:10)"))?;
            let op = LoadOp::parse(name.trim()).ok_or_else(|| {
                format!("unknown operation `{name}` (ping, get, set, delete, compute)")
            })?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("`{weight}` is not a whole-number weight"))?;
            weights[op.index()] = weights[op.index()].saturating_add(weight);
        }
        if weights.iter().all(|&w| w == 0) {
            return Err(format!("`{s}` gives no operation a weight"));
        }
        if weights.iter().map(|&w| u64::from(w)).sum::<u64>() > u64::from(u32::MAX) {
            return Err("the weights add up to more than 4294967295".into());
        }
        Ok(Mix::from_weights(weights))
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut previous = 0;
        let mut first = true;
        for (op, &c) in LoadOp::ALL.iter().zip(&self.cumulative) {
            if c > previous {
                write!(
                    f,
                    "{}{}:{}",
                    if first { "" } else { "," },
                    op.name(),
                    c - previous
                )?;
                first = false;
            }
            previous = c;
        }
        Ok(())
    }
}

/// Value (and ping payload, compute input) sizes: one size, or a range drawn uniformly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueSize {
    pub min: usize,
    pub max: usize,
}

impl ValueSize {
    pub fn pick(&self, rng: &mut fastrand::Rng) -> usize {
        if self.min == self.max {
            self.min
        } else {
            rng.usize(self.min..=self.max)
        }
    }
}

impl FromStr for ValueSize {
    type Err = String;
    fn from_str(s: &str) -> Result<ValueSize, String> {
        let bad = || format!("`{s}` is not a size or a range of sizes (examples: 100, 16-4096)");
        let size = |t: &str| {
            t.trim()
                .parse::<percore::config::Size>()
                .map(|s| s.0 as usize)
                .map_err(|_| bad())
        };
        let (min, max) = match s.split_once('-') {
            Some((a, b)) => (size(a)?, size(b)?),
            None => (size(s)?, size(s)?),
        };
        if min > max {
            return Err(bad());
        }
        Ok(ValueSize { min, max })
    }
}

impl fmt::Display for ValueSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else {
            write!(f, "{}-{}", self.min, self.max)
        }
    }
}

/// How keys are drawn from the keyspace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyDist {
    Uniform,
    /// Zipf with exponent `s`: key rank r is drawn with probability proportional to 1/r^s.
    Zipf(f64),
}

impl FromStr for KeyDist {
    type Err = String;
    fn from_str(s: &str) -> Result<KeyDist, String> {
        let t = s.trim();
        if t == "uniform" {
            return Ok(KeyDist::Uniform);
        }
        if let Some(exp) = t.strip_prefix("zipf:") {
            return match exp.trim().parse::<f64>() {
                Ok(e) if e.is_finite() && e > 0.0 => Ok(KeyDist::Zipf(e)),
                _ => Err(format!(
                    "`{exp}` is not a positive Zipf exponent (example: zipf:0.99)"
                )),
            };
        }
        Err(format!("`{s}` is not a key distribution (uniform, zipf:S)"))
    }
}

impl fmt::Display for KeyDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyDist::Uniform => write!(f, "uniform"),
            KeyDist::Zipf(s) => write!(f, "zipf:{s}"),
        }
    }
}

/// Draws key indexes in `0..keys` by a [`KeyDist`].
#[derive(Debug, Clone)]
pub enum KeySampler {
    Uniform { keys: u64 },
    Zipf(Zipf),
}

impl KeySampler {
    pub fn new(dist: KeyDist, keys: u64) -> KeySampler {
        match dist {
            KeyDist::Uniform => KeySampler::Uniform { keys },
            KeyDist::Zipf(s) => KeySampler::Zipf(Zipf::new(keys, s)),
        }
    }

    pub fn sample(&self, rng: &mut fastrand::Rng) -> u64 {
        match self {
            KeySampler::Uniform { keys } => rng.u64(0..*keys),
            // Rank 1 (the hottest) is key 0.
            KeySampler::Zipf(z) => z.sample(rng) - 1,
        }
    }
}

/// A Zipf sampler over ranks 1..=n by rejection-inversion (Hörmann and Derflinger, "Rejection-
/// inversion to generate variates from monotone discrete distributions", 1996): constant time
/// and memory whatever n is, where a table of the distribution would cost 8 bytes per key.
#[derive(Debug, Clone)]
pub struct Zipf {
    n: u64,
    exponent: f64,
    h_integral_x1: f64,
    h_integral_n: f64,
    s: f64,
}

impl Zipf {
    pub fn new(n: u64, exponent: f64) -> Zipf {
        let n = n.max(1);
        let mut z = Zipf {
            n,
            exponent,
            h_integral_x1: 0.0,
            h_integral_n: 0.0,
            s: 0.0,
        };
        z.h_integral_x1 = z.h_integral(1.5) - 1.0;
        z.h_integral_n = z.h_integral(n as f64 + 0.5);
        z.s = 2.0 - z.h_integral_inverse(z.h_integral(2.5) - z.h(2.0));
        z
    }

    /// A rank in 1..=n.
    pub fn sample(&self, rng: &mut fastrand::Rng) -> u64 {
        loop {
            let u = self.h_integral_n + rng.f64() * (self.h_integral_x1 - self.h_integral_n);
            let x = self.h_integral_inverse(u);
            let k = ((x + 0.5) as u64).clamp(1, self.n);
            let kf = k as f64;
            if kf - x <= self.s || u >= self.h_integral(kf + 0.5) - self.h(kf) {
                return k;
            }
        }
    }

    fn h(&self, x: f64) -> f64 {
        (-self.exponent * x.ln()).exp()
    }

    fn h_integral(&self, x: f64) -> f64 {
        let log_x = x.ln();
        helper2((1.0 - self.exponent) * log_x) * log_x
    }

    fn h_integral_inverse(&self, x: f64) -> f64 {
        let t = (x * (1.0 - self.exponent)).max(-1.0);
        (helper1(t) * x).exp()
    }
}

/// ln(1+x)/x, accurate near 0.
fn helper1(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.ln_1p() / x
    } else {
        1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))
    }
}

/// (e^x-1)/x, accurate near 0.
fn helper2(x: f64) -> f64 {
    if x.abs() > 1e-8 {
        x.exp_m1() / x
    } else {
        1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))
    }
}

/// Keys are printable so the same keyspace works over the memcached text protocol: `k`, then
/// the key's index in decimal, zero-padded to the key size.
pub fn write_key(index: u64, key_size: usize, buf: &mut [u8; 250]) -> &[u8] {
    let key = &mut buf[..key_size];
    key.fill(b'0');
    key[0] = b'k';
    let mut n = index;
    let mut at = key_size;
    while n > 0 && at > 1 {
        at -= 1;
        key[at] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    key
}

/// The smallest key size that holds every index below `keys`.
pub fn min_key_size(keys: u64) -> usize {
    1 + keys.saturating_sub(1).max(1).ilog10() as usize + 1
}

/// The cache workload's value of key `index`: its length and where its content starts in the
/// byte pool, both fixed by the key. Every set of a key then writes the same bytes, whichever
/// connection, core or run (whatever its --seed) sends it, so a hit is compared byte for byte,
/// also after a run with other draws filled the cache; and with `--value-size MIN-MAX` each
/// key keeps one size, spread uniformly over the range. `pool_len` must be at least
/// `sizes.max`.
pub fn keyed_value(index: u64, sizes: ValueSize, pool_len: usize) -> (usize, usize) {
    let first = splitmix64(index);
    let span = (sizes.max - sizes.min) as u64 + 1;
    let len = sizes.min + (first % span) as usize;
    let starts = (pool_len.saturating_sub(len) as u64) + 1;
    let offset = (splitmix64(first) % starts) as usize;
    (len, offset)
}

/// SplitMix64's output function: a cheap, well-mixed hash of a 64-bit number.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Bytes a value's checksum takes at its end.
pub const CHECKSUM_LEN: usize = 4;

/// Writes a value of `len` bytes (`len >= CHECKSUM_LEN`) for `key` into `out`: `content`'s
/// first `len - 4` bytes, then CRC-32C over key and that content, little-endian. Binding the
/// key in means a value served for the wrong key fails the check too.
pub fn make_value(key: &[u8], content: &[u8], len: usize, out: &mut Vec<u8>) {
    let body = &content[..len - CHECKSUM_LEN];
    out.clear();
    out.extend_from_slice(body);
    let crc = crc32c::crc32c_append(crc32c::crc32c(key), body);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Whether `value` is one [`make_value`] wrote for `key`.
pub fn value_is_intact(key: &[u8], value: &[u8]) -> bool {
    let Some(split) = value.len().checked_sub(CHECKSUM_LEN) else {
        return false;
    };
    let (body, tail) = value.split_at(split);
    let crc = crc32c::crc32c_append(crc32c::crc32c(key), body);
    tail == crc.to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_draws_in_proportion() {
        let mix: Mix = "get:90,set:10".parse().unwrap();
        assert_eq!(mix.ops(), vec![LoadOp::Get, LoadOp::Set]);
        assert_eq!(mix.to_string(), "get:90,set:10");
        let mut rng = fastrand::Rng::with_seed(7);
        let gets = (0..10_000)
            .filter(|_| mix.pick(&mut rng) == LoadOp::Get)
            .count();
        assert!((8_700..9_300).contains(&gets), "{gets}");
        assert!("get:0".parse::<Mix>().is_err());
        assert!("fetch:3".parse::<Mix>().is_err());
        assert!("get".parse::<Mix>().is_err());
        let deletes: Mix = "delete:1,get:8,set:1".parse().unwrap();
        assert_eq!(
            deletes.ops(),
            vec![LoadOp::Get, LoadOp::Set, LoadOp::Delete]
        );
        assert_eq!(deletes.to_string(), "get:8,set:1,delete:1");
    }

    #[test]
    fn value_sizes_parse() {
        assert_eq!("100".parse(), Ok(ValueSize { min: 100, max: 100 }));
        assert_eq!("16-4KiB".parse(), Ok(ValueSize { min: 16, max: 4096 }));
        assert!("9-3".parse::<ValueSize>().is_err());
    }

    #[test]
    fn key_dists_parse() {
        assert_eq!("uniform".parse(), Ok(KeyDist::Uniform));
        assert_eq!("zipf:0.99".parse(), Ok(KeyDist::Zipf(0.99)));
        assert!("zipf:-1".parse::<KeyDist>().is_err());
        assert!("normal".parse::<KeyDist>().is_err());
    }

    #[test]
    fn zipf_follows_its_law() {
        let z = Zipf::new(1000, 1.0);
        let mut rng = fastrand::Rng::with_seed(3);
        let mut counts = vec![0u32; 1001];
        for _ in 0..200_000 {
            let k = z.sample(&mut rng);
            assert!((1..=1000).contains(&k));
            counts[k as usize] += 1;
        }
        // P(1)/P(2) = 2 and P(1)/P(4) = 4 for s = 1.
        let r2 = f64::from(counts[1]) / f64::from(counts[2]);
        let r4 = f64::from(counts[1]) / f64::from(counts[4]);
        assert!((1.85..2.15).contains(&r2), "{r2}");
        assert!((3.6..4.4).contains(&r4), "{r4}");
        // H(1000) is about 7.49, so rank 1 takes about 13.4%.
        let share = f64::from(counts[1]) / 200_000.0;
        assert!((0.125..0.143).contains(&share), "{share}");
    }

    #[test]
    fn zipf_of_one_key_and_other_exponents() {
        let mut rng = fastrand::Rng::with_seed(5);
        assert!((0..100).all(|_| Zipf::new(1, 0.99).sample(&mut rng) == 1));
        let z = Zipf::new(10, 0.5);
        assert!((0..10_000).all(|_| (1..=10).contains(&z.sample(&mut rng))));
    }

    #[test]
    fn keys_are_padded_decimal() {
        let mut buf = [0; 250];
        assert_eq!(write_key(42, 8, &mut buf), b"k0000042");
        assert_eq!(write_key(0, 3, &mut buf), b"k00");
        assert_eq!(min_key_size(1), 2);
        assert_eq!(min_key_size(10), 2);
        assert_eq!(min_key_size(11), 3);
        assert_eq!(min_key_size(100_000), 6);
    }

    #[test]
    fn keyed_values_are_fixed_by_the_key_and_spread_over_the_sizes() {
        let sizes = ValueSize { min: 64, max: 4096 };
        let pool = 8192;
        assert_eq!(keyed_value(7, sizes, pool), keyed_value(7, sizes, pool));
        assert_ne!(keyed_value(7, sizes, pool), keyed_value(8, sizes, pool));
        let mut below_half = 0;
        let mut total = 0u64;
        for index in 0..10_000 {
            let (len, offset) = keyed_value(index, sizes, pool);
            assert!((64..=4096).contains(&len), "{len}");
            assert!(offset + len <= pool, "{offset} + {len}");
            below_half += usize::from(len < 2080);
            total += len as u64;
        }
        // Uniform over 64..=4096: half below the middle, mean 2080.
        assert!((4_700..5_300).contains(&below_half), "{below_half}");
        assert!(
            (2_000..2_160).contains(&(total / 10_000)),
            "{}",
            total / 10_000
        );
        let fixed = ValueSize { min: 100, max: 100 };
        assert!((0..100).all(|i| keyed_value(i, fixed, 200).0 == 100));
        assert_eq!(
            keyed_value(5, fixed, 100).1,
            0,
            "one place a whole-pool value fits"
        );
    }

    #[test]
    fn values_carry_a_checksum_of_key_and_content() {
        let mut v = Vec::new();
        make_value(b"k1", b"abcdefgh", 8, &mut v);
        assert_eq!(&v[..4], b"abcd");
        assert!(value_is_intact(b"k1", &v));
        assert!(
            !value_is_intact(b"k2", &v),
            "a value served for another key"
        );
        let mut flipped = v.clone();
        flipped[1] ^= 1;
        assert!(!value_is_intact(b"k1", &flipped));
        assert!(!value_is_intact(b"k1", b"abc"));
        make_value(b"k1", b"", 4, &mut v);
        assert!(value_is_intact(b"k1", &v));
    }
}
