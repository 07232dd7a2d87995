//! Device time per kernel (`Backend::set_profiling`, `yangtuo bench --profile`): where a
//! token's time goes on a GPU. The kernels' own time, the device's gaps between them, and
//! what the host adds on top (the wall clock minus the span) are three different fixes, so
//! a profile keeps them apart.
//!
//! A leaf: it knows no backend.

use std::collections::HashMap;

/// What one kind of dispatch cost while profiling was on.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelTime {
    /// The kernel and the shape it ran on, e.g. "matvec Q4_0 norm+rope 4096x4096".
    pub name: String,
    pub calls: u64,
    /// Device time summed over the calls, in nanoseconds.
    pub ns: f64,
    /// Bytes of weights the calls read, 0 for kernels that read no weight matrix: with `ns`,
    /// the bandwidth a product reached.
    pub weight_bytes: u64,
}

/// The kernels timed since profiling began (or since the last `take_profile`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    /// Most device time first.
    pub kernels: Vec<KernelTime>,
    /// From each submission's first kernel start to its last kernel end, summed: the kernels
    /// plus the device's idle gaps between them (barriers, launch latency).
    pub span_ns: f64,
}

impl Profile {
    /// The kernels' own time, without the gaps.
    pub fn busy_ns(&self) -> f64 {
        self.kernels.iter().map(|k| k.ns).sum()
    }
}

/// Adds up timed dispatches by kernel `K` (what a backend tells its dispatches apart by),
/// named only when taken.
pub struct Tally<K> {
    by_kernel: HashMap<K, (u64, f64, u64)>,
    span_ns: f64,
}

impl<K> Default for Tally<K> {
    fn default() -> Self {
        Tally {
            by_kernel: HashMap::new(),
            span_ns: 0.0,
        }
    }
}

impl<K: std::hash::Hash + Eq> Tally<K> {
    pub fn add(&mut self, kernel: K, ns: f64, weight_bytes: u64) {
        let e = self.by_kernel.entry(kernel).or_default();
        e.0 += 1;
        e.1 += ns;
        e.2 += weight_bytes;
    }

    pub fn add_span(&mut self, ns: f64) {
        self.span_ns += ns;
    }

    /// Everything tallied, most device time first; the tally starts again from nothing.
    pub fn take(&mut self, name: impl Fn(&K) -> String) -> Profile {
        let mut kernels: Vec<KernelTime> = std::mem::take(&mut self.by_kernel)
            .into_iter()
            .map(|(k, (calls, ns, weight_bytes))| KernelTime {
                name: name(&k),
                calls,
                ns,
                weight_bytes,
            })
            .collect();
        kernels.sort_by(|a, b| b.ns.total_cmp(&a.ns).then_with(|| a.name.cmp(&b.name)));
        Profile {
            kernels,
            span_ns: std::mem::take(&mut self.span_ns),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_adds_by_name_and_starts_again_when_taken() {
        let mut t = Tally::default();
        t.add(1, 3.0, 100);
        t.add(2, 5.0, 0);
        t.add(1, 4.0, 100);
        t.add_span(20.0);
        let name = |k: &i32| ["", "matvec", "norm"][*k as usize].to_string();
        let p = t.take(name);
        assert_eq!(
            p.kernels[0],
            KernelTime {
                name: "matvec".into(),
                calls: 2,
                ns: 7.0,
                weight_bytes: 200
            }
        );
        assert_eq!(p.kernels[1].name, "norm");
        assert_eq!((p.busy_ns(), p.span_ns), (12.0, 20.0));
        assert_eq!(t.take(name), Profile::default());
    }
}
