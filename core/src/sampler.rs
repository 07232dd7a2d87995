//! Choosing the next token from logits: greedy, temperature, top-k, top-p (Meta's
//! algorithm), min-p and repetition penalty, with a seeded generator so a seed gives the
//! same tokens on every backend.

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy. Meta's default is 0.6.
    pub temperature: f32,
    /// Nucleus sampling mass in (0, 1]. Meta's default is 0.9.
    pub top_p: f32,
    pub top_k: Option<usize>,
    /// Drop tokens whose probability is below `min_p` times the top one.
    pub min_p: Option<f32>,
    /// CTRL-style penalty on every token already in the prompt or answer (1.1–1.3 is usual).
    pub repetition_penalty: Option<f32>,
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.6,
            top_p: 0.9,
            top_k: None,
            min_p: None,
            repetition_penalty: None,
            seed: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0) || !self.temperature.is_finite() {
            return Err(Error::arg(
                "temperature",
                format!("must be a finite number >= 0, got {}", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::arg(
                "top_p",
                format!("must be in (0, 1], got {}", self.top_p),
            ));
        }
        if self.top_k == Some(0) {
            return Err(Error::arg("top_k", "must be at least 1 (or unset)"));
        }
        if let Some(m) = self.min_p {
            if !(0.0..=1.0).contains(&m) {
                return Err(Error::arg("min_p", format!("must be in [0, 1], got {m}")));
            }
        }
        if let Some(r) = self.repetition_penalty {
            if !(r > 0.0) || !r.is_finite() {
                return Err(Error::arg(
                    "repetition_penalty",
                    format!("must be a positive number, got {r}"),
                ));
            }
        }
        Ok(())
    }

    /// True when the pick needs only the argmax (which a GPU computes without reading logits back).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 && self.repetition_penalty.is_none_or(|r| r == 1.0)
    }
}

/// xoshiro256** seeded through splitmix64: small, fast, and the same on every platform.
#[derive(Debug, Clone)]
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub struct Sampler {
    pub params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    /// A sampler for `params`, which `SamplingParams::validate` has accepted.
    pub fn new(params: SamplingParams) -> Sampler {
        let seed = params.seed.unwrap_or_else(|| {
            #[cfg(not(target_arch = "wasm32"))]
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64);
            #[cfg(target_arch = "wasm32")]
            let t: std::result::Result<u64, ()> = Ok((js_random() * u64::MAX as f64) as u64);
            t.unwrap_or(0x5eed)
        });
        Sampler {
            params,
            rng: Rng::new(seed),
        }
    }

    /// Pick the next token. `history` is every id so far (prompt and answer), for the
    /// repetition penalty.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        if let Some(r) = p.repetition_penalty.filter(|r| *r != 1.0) {
            // as transformers' RepetitionPenaltyLogitsProcessor: once per distinct token
            let mut seen = vec![false; logits.len()];
            for &id in history {
                let i = id as usize;
                if i < logits.len() && !seen[i] {
                    seen[i] = true;
                    logits[i] = if logits[i] > 0.0 {
                        logits[i] / r
                    } else {
                        logits[i] * r
                    };
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        // softmax of logits / temperature, in f64
        let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let t = p.temperature as f64;
        let mut probs: Vec<(f64, u32)> = logits
            .iter()
            .enumerate()
            .map(|(i, l)| (((*l as f64 - max) / t).exp(), i as u32))
            .collect();
        let sum: f64 = probs.iter().map(|x| x.0).sum();
        probs.iter_mut().for_each(|x| x.0 /= sum);
        // Sorted descending (ties by id, so every platform agrees), but only as far as the
        // nucleus reaches: sort the top k, and widen k only if their mass is below top_p.
        let order = |a: &(f64, u32), b: &(f64, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let limit = p.top_k.unwrap_or(probs.len()).clamp(1, probs.len());
        let mut k = limit.min(64);
        let keep = loop {
            if k < probs.len() {
                probs.select_nth_unstable_by(k - 1, order);
            }
            probs[..k].sort_by(order);
            // top-p as Meta's sample_top_p: drop tokens whose preceding mass exceeds p
            let mut cum = 0.0;
            let cut = probs[..k].iter().position(|(pr, _)| {
                let over = cum > p.top_p as f64;
                cum += pr;
                over
            });
            match cut {
                Some(i) => break i,
                None if k == limit => break k,
                None => k = (k * 8).min(limit),
            }
        };
        probs.truncate(keep.max(1));
        if let Some(m) = p.min_p {
            let floor = probs[0].0 * m as f64;
            probs.retain(|x| x.0 >= floor);
        }
        // renormalise and draw
        let total: f64 = probs.iter().map(|x| x.0).sum();
        let mut u = self.rng.uniform() * total;
        for (pr, id) in &probs {
            if u < *pr {
                return *id;
            }
            u -= pr;
        }
        probs.last().expect("at least one token kept").1
    }
}

/// The first index of the largest value.
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(target_arch = "wasm32")]
fn js_random() -> f64 {
    js_sys::Math::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_parameters_are_rejected() {
        let bad = |p: SamplingParams| p.validate().err().map(|e| e.to_string()).unwrap();
        assert!(
            bad(SamplingParams {
                temperature: -0.1,
                ..Default::default()
            })
            .contains("temperature")
        );
        assert!(
            bad(SamplingParams {
                top_p: 0.0,
                ..Default::default()
            })
            .contains("top_p")
        );
        assert!(
            bad(SamplingParams {
                top_p: 1.5,
                ..Default::default()
            })
            .contains("top_p")
        );
        assert!(
            bad(SamplingParams {
                top_k: Some(0),
                ..Default::default()
            })
            .contains("top_k")
        );
        assert!(
            bad(SamplingParams {
                repetition_penalty: Some(0.0),
                ..Default::default()
            })
            .contains("repetition")
        );
    }

    #[test]
    fn seeded_sampling_is_reproducible() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 17) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplingParams {
                seed: Some(seed),
                temperature: 1.0,
                top_p: 0.95,
                ..Default::default()
            });
            (0..50)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_p_keeps_the_nucleus_like_meta() {
        // probs 0.5, 0.3, 0.2: with p = 0.6 Meta keeps the first two (0.5 <= 0.6 < 0.8)
        let mut logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.6,
            seed: Some(1),
            ..Default::default()
        });
        let picks: Vec<u32> = (0..2000).map(|_| s.sample(&mut logits, &[])).collect();
        assert!(!picks.contains(&2));
        let ones = picks.iter().filter(|&&x| x == 1).count() as f64 / 2000.0;
        assert!(
            (ones - 0.375).abs() < 0.04,
            "renormalised 0.3/0.8 = 0.375, got {ones}"
        );
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let mut logits = [2.0f32, 1.9, -1.0];
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: Some(1.3),
            ..SamplingParams::greedy()
        });
        assert_eq!(s.sample(&mut logits, &[0, 0, 2]), 1);
        assert_eq!(logits, [2.0 / 1.3, 1.9, -1.3]);
    }
}
