//! Weight matrices on the wgpu backend: in the GPU layout of `backend/layout.rs` (shared with
//! CUDA), split by rows into chunks no larger than the device binds (lavapipe: 128 MiB).

// Re-exported: tests/tests/quant.rs reads the layout through this path.
pub use crate::backend::layout::{Layout, layout, repack_rows};

/// How many rows fit one chunk under the device's binding and buffer limits.
pub fn rows_per_chunk(lay: &Layout, max_binding: u64, max_buffer: u64) -> usize {
    let by_payload = max_binding / lay.payload_row.max(1) as u64;
    let by_scales = if lay.scales_row > 0 {
        max_binding / lay.scales_row as u64
    } else {
        u64::MAX
    };
    let by_buffer = max_buffer.saturating_sub(512) / (lay.payload_row + lay.scales_row) as u64;
    by_payload.min(by_scales).min(by_buffer).max(1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::WeightFormat;

    #[test]
    fn chunks_respect_the_binding_limit() {
        // a 32000 × 4096 f16 embedding is 250 MiB; lavapipe binds 128 MiB
        let lay = layout(WeightFormat::F16, 4096);
        let rows = rows_per_chunk(&lay, 128 << 20, 1 << 30);
        assert!(rows * lay.payload_row <= 128 << 20);
        assert_eq!(32000usize.div_ceil(rows), 2);
    }
}
