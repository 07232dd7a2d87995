//! Device timestamps around each dispatch, for `Backend::set_profiling`. While profiling,
//! every dispatch gets a compute pass of its own whose start and end the device stamps;
//! the submit then waits for the stamps and tallies them by kernel and weight shape. That
//! wait serializes the host with the device, so only the device times mean anything.
//! Native only: the browser cannot block on a readback.

use super::kernels::Kernel;
use crate::backend::profile::{Profile, Tally};

/// What a dispatch is tallied under: its kernel and, for one reading a weight matrix, the
/// matrix's (rows, cols).
pub type Tag = (Kernel, Option<(u32, u32)>);

/// Where the stamps of one submission land, and the tally so far.
pub struct Timer {
    queries: wgpu::QuerySet,
    /// QUERY_RESOLVE target, copied to `readback` (a query resolves only into a buffer that
    /// cannot be mapped).
    resolved: wgpu::Buffer,
    readback: wgpu::Buffer,
    /// Dispatches one submission can stamp.
    capacity: usize,
    tick_ns: f64,
    tally: Tally<Tag>,
}

/// The most dispatches one submission stamps (two queries each; wgpu allows 4096 queries).
const MAX_STAMPED: usize = 2048;

impl Timer {
    pub fn new(device: &wgpu::Device, queue: &wgpu::Queue) -> Timer {
        let mut t = Timer {
            queries: query_set(device, 1),
            resolved: buffer(device, 1, false),
            readback: buffer(device, 1, true),
            capacity: 0,
            tick_ns: queue.get_timestamp_period() as f64,
            tally: Tally::default(),
        };
        t.reserve(device, super::SUBMIT_GROUP);
        t
    }

    /// Room for `n` dispatches in one submission (up to MAX_STAMPED; past it, dispatches
    /// run unstamped).
    pub fn reserve(&mut self, device: &wgpu::Device, n: usize) {
        let n = n.min(MAX_STAMPED);
        if n <= self.capacity {
            return;
        }
        let n = n.next_power_of_two().min(MAX_STAMPED);
        self.queries = query_set(device, n);
        self.resolved = buffer(device, n, false);
        self.readback = buffer(device, n, true);
        self.capacity = n;
    }

    /// The stamps of the pass that holds dispatch `i` of a submission.
    pub fn writes(&self, i: usize) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        (i < self.capacity).then(|| wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(2 * i as u32),
            end_of_pass_write_index: Some(2 * i as u32 + 1),
        })
    }

    /// After the submission's last pass: its `n` dispatches' stamps to the readback buffer.
    pub fn resolve(&self, enc: &mut wgpu::CommandEncoder, n: usize) {
        let n = n.min(self.capacity);
        if n == 0 {
            return;
        }
        enc.resolve_query_set(&self.queries, 0..2 * n as u32, &self.resolved, 0);
        enc.copy_buffer_to_buffer(&self.resolved, 0, &self.readback, 0, 16 * n as u64);
    }

    /// Wait for the submission and tally its dispatches (`(tag, weight bytes)` in order).
    pub fn collect(
        &mut self,
        device: &wgpu::Device,
        done: wgpu::SubmissionIndex,
        dispatched: &[(Tag, u64)],
    ) {
        let n = dispatched.len().min(self.capacity);
        if n == 0 {
            return;
        }
        let slice = self.readback.slice(..16 * n as u64);
        slice.map_async(wgpu::MapMode::Read, |_| {});
        let waited = device.poll(wgpu::PollType::Wait {
            submission_index: Some(done),
            timeout: None,
        });
        let ticks: Vec<u64> = match (waited, slice.get_mapped_range()) {
            (Ok(_), Ok(range)) => bytemuck::pod_collect_to_vec(&range),
            // a lost device shows at the next readback; this submission goes untimed
            _ => vec![],
        };
        self.readback.unmap();
        if ticks.len() < 2 * n {
            return;
        }
        for (i, (tag, bytes)) in dispatched[..n].iter().enumerate() {
            let ns = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * self.tick_ns;
            self.tally.add(*tag, ns, *bytes);
        }
        let first = ticks[..2 * n].iter().step_by(2).min();
        let last = ticks[1..2 * n].iter().step_by(2).max();
        if let (Some(first), Some(last)) = (first, last) {
            self.tally
                .add_span(last.saturating_sub(*first) as f64 * self.tick_ns);
        }
    }

    pub fn take(&mut self) -> Profile {
        self.tally.take(|(kernel, shape)| match shape {
            Some((rows, cols)) => format!("{} {rows}x{cols}", kernel.label()),
            None => kernel.label(),
        })
    }
}

fn query_set(device: &wgpu::Device, dispatches: usize) -> wgpu::QuerySet {
    device.create_query_set(&wgpu::QuerySetDescriptor {
        label: Some("kernel timestamps"),
        ty: wgpu::QueryType::Timestamp,
        count: 2 * dispatches as u32,
    })
}

fn buffer(device: &wgpu::Device, dispatches: usize, mappable: bool) -> wgpu::Buffer {
    let usage = if mappable {
        wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST
    } else {
        wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC
    };
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("kernel timestamps"),
        size: 16 * dispatches as u64,
        usage,
        mapped_at_creation: false,
    })
}

#[cfg(test)]
mod tests {
    use crate::backend::layout::layout;
    use crate::backend::wgpu::{Fusing, Wgpu};
    use crate::backend::{Backend, KvDtype};
    use crate::model::Model;
    use crate::testing::{RandomSource, config};
    use crate::weights::{RopeStyle, WeightFormat};

    /// A prompt's and three decode tokens' logits.
    fn logits(m: &Model<Wgpu>) -> Vec<Vec<f32>> {
        let mut s = m.new_state(32, 8, 1).unwrap();
        let mut all = vec![];
        for (pos, tokens) in [
            (0, &[1u32, 20, 30, 40][..]),
            (4, &[50]),
            (5, &[60]),
            (6, &[70]),
        ] {
            m.forward(&mut s, tokens, pos, 1).unwrap();
            all.push(pollster::block_on(m.backend.read(&s.scratch.logits, 1)).unwrap());
        }
        all
    }

    #[test]
    fn a_profile_times_every_dispatch_and_changes_no_result() {
        let Ok(gpu) = pollster::block_on(Wgpu::with_f16(true)) else {
            eprintln!("no wgpu adapter; skipped");
            return;
        };
        let mut source = RandomSource {
            config: config(256, 512, 4, 2, 256, false),
            format: WeightFormat::Q4_0,
            style: RopeStyle::Half,
            dequantized: false,
            seed: 3,
        };
        let mut m = Model::load(&mut source, gpu, 0, &mut |_| {}).unwrap();
        m.kv_dtype = KvDtype::F16;
        let b = &m.backend;
        b.set_fusing(Fusing::All);
        let plain = logits(&m);

        // lavapipe (CI) and the GPUs wgpu runs natively stamp time
        assert!(
            b.set_profiling(true),
            "{} has no timestamp queries",
            b.name()
        );
        let before = b.dispatch_count();
        let profiled = logits(&m);
        let dispatched = b.dispatch_count() - before;
        let p = b.take_profile();
        assert!(plain == profiled, "a pass per dispatch changed the logits");
        assert_eq!(
            p.kernels.iter().map(|k| k.calls).sum::<u64>(),
            dispatched as u64
        );
        assert!(p.busy_ns() > 0.0 && p.span_ns > 0.0);
        assert!(
            p.kernels.windows(2).all(|w| w[0].ns >= w[1].ns),
            "most time first"
        );
        // a product reads its whole matrix once per call
        let mut products = 0;
        for k in p.kernels.iter().filter(|k| k.name.starts_with("mat")) {
            let shape = k.name.rsplit(' ').next().unwrap();
            let (rows, cols) = shape.split_once('x').unwrap();
            let (rows, cols): (u64, usize) = (rows.parse().unwrap(), cols.parse().unwrap());
            let lay = layout(WeightFormat::Q4_0, cols);
            let per_call = rows * (lay.payload_row + lay.scales_row) as u64;
            assert_eq!(k.weight_bytes, k.calls * per_call, "{}", k.name);
            products += 1;
        }
        // q, k, v, o, gate, up, down and the head: six shapes, fused variants apart
        assert!(products >= 6, "{:?}", p.kernels);
        assert!(
            p.kernels
                .iter()
                .any(|k| k.name == "matvec Q4_0 norm+rope 256x256"),
            "{:?}",
            p.kernels
        );

        assert!(b.set_profiling(false));
        logits(&m);
        assert!(b.take_profile().kernels.is_empty(), "off means off");
    }
}
