//! The layout of a weight matrix on the GPU, shared by the wgpu and CUDA backends: each
//! row repacked so its payload starts on a 16-byte boundary (wide, aligned loads), with the
//! scales moved to their own array where a ggml block is not a multiple of 4 bytes. The
//! kernels that read it document it per format: `shaders/weights_<format>.wgsl` and the
//! header of `cuda/kernels.cu`.
//!
//! A leaf: it knows weight formats, not backends.

use crate::weights::{WeightData, WeightFormat};

/// GPU layout parameters of a format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Weights per dot unit (UNIT in the WGSL shaders).
    pub unit: usize,
    /// Dot units per row, padding included.
    pub nb: usize,
    /// Payload bytes per row, a multiple of 16 (`wrow` in kernels.cu).
    pub payload_row: usize,
    /// Scale bytes per row, 0 where the format keeps none apart (`srow` in kernels.cu).
    pub scales_row: usize,
}

/// The GPU layout of a `[_, cols]` matrix in `format`.
pub fn layout(format: WeightFormat, cols: usize) -> Layout {
    let unit = match format {
        WeightFormat::F32 => 4,
        WeightFormat::F16 | WeightFormat::BF16 => 8,
        _ => 32,
    };
    // float rows: 16 bytes per unit, so a row's tail is zero-padded to 16 bytes
    let nb = cols.div_ceil(unit);
    let (payload_row, scales_row) = match format {
        WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => (nb * 16, 0),
        WeightFormat::Q8_0 => (nb * 32, nb * 2),
        WeightFormat::Q4_0 => (nb * 16, nb * 2),
        WeightFormat::Q4_1 | WeightFormat::Gptq4 => (nb * 16, nb * 4),
        WeightFormat::Q4K => (nb / 8 * 144, 0),
        WeightFormat::Q6K => (nb / 8 * 208, nb / 8 * 2),
    };
    Layout {
        unit,
        nb,
        payload_row,
        scales_row,
    }
}

/// Write rows `r0..r1` of `w` in GPU layout: payload into `payload`, scales into `scales`.
pub fn repack_rows(w: &WeightData, r0: usize, r1: usize, payload: &mut [u8], scales: &mut [u8]) {
    let f = w.format;
    let lay = layout(f, w.cols);
    let src_row = f.row_bytes(w.cols, "").expect("validated at load");
    let bb = f.block_bytes();
    for (i, r) in (r0..r1).enumerate() {
        let src = &w.bytes[r * src_row..(r + 1) * src_row];
        let dst = &mut payload[i * lay.payload_row..(i + 1) * lay.payload_row];
        let sc = &mut scales[i * lay.scales_row..(i + 1) * lay.scales_row];
        match f {
            // float rows (zero-padded to 16 bytes) and Q4_K as stored
            WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 | WeightFormat::Q4K => {
                dst[..src.len()].copy_from_slice(src);
                dst[src.len()..].fill(0);
            }
            // (d, qs) → qs to the payload, d to the scales; (d, m) and GPTQ's (d, z) likewise
            WeightFormat::Q8_0 | WeightFormat::Q4_0 | WeightFormat::Q4_1 | WeightFormat::Gptq4 => {
                let head = if matches!(f, WeightFormat::Q4_1 | WeightFormat::Gptq4) {
                    4
                } else {
                    2
                };
                let body = bb - head;
                for (b, blk) in src.chunks_exact(bb).enumerate() {
                    sc[b * head..(b + 1) * head].copy_from_slice(&blk[..head]);
                    dst[b * body..(b + 1) * body].copy_from_slice(&blk[head..]);
                }
            }
            // (ql, qh, scales, d) → the first 208 bytes to the payload, d to the scales
            WeightFormat::Q6K => {
                for (b, blk) in src.chunks_exact(bb).enumerate() {
                    dst[b * 208..(b + 1) * 208].copy_from_slice(&blk[..208]);
                    sc[b * 2..(b + 1) * 2].copy_from_slice(&blk[208..]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::Blob;

    #[test]
    fn q4_0_scales_move_out_of_the_blocks() {
        // two rows of one block each: d = 0x3c00 (1.0), nibbles 0x11 / 0x22
        let mut bytes = vec![];
        for v in [0x11u8, 0x22] {
            bytes.extend_from_slice(&[0x00, 0x3c]);
            bytes.extend_from_slice(&[v; 16]);
        }
        let w = WeightData::new(WeightFormat::Q4_0, 2, 32, Blob::from_vec(bytes), "t").unwrap();
        let lay = layout(WeightFormat::Q4_0, 32);
        let (mut p, mut s) = (
            vec![0u8; 2 * lay.payload_row],
            vec![0u8; 2 * lay.scales_row],
        );
        repack_rows(&w, 0, 2, &mut p, &mut s);
        assert_eq!(&p[..16], &[0x11; 16]);
        assert_eq!(&p[16..], &[0x22; 16]);
        assert_eq!(s, [0x00, 0x3c, 0x00, 0x3c]);
    }

    #[test]
    fn gptq4_d_and_z_move_out_of_the_blocks() {
        // one row of two blocks: (d, z) = (1.0, 8.0) / (2.0, 16.0), nibbles 0x21 / 0x43
        let mut bytes = vec![];
        for (d, z, v) in [(0x3c00u16, 0x4800u16, 0x21u8), (0x4000, 0x4c00, 0x43)] {
            bytes.extend_from_slice(&d.to_le_bytes());
            bytes.extend_from_slice(&z.to_le_bytes());
            bytes.extend_from_slice(&[v; 16]);
        }
        let w = WeightData::new(WeightFormat::Gptq4, 1, 64, Blob::from_vec(bytes), "t").unwrap();
        let lay = layout(WeightFormat::Gptq4, 64);
        assert_eq!(
            (lay.unit, lay.nb, lay.payload_row, lay.scales_row),
            (32, 2, 32, 8)
        );
        let (mut p, mut s) = (vec![0u8; lay.payload_row], vec![0u8; lay.scales_row]);
        repack_rows(&w, 0, 1, &mut p, &mut s);
        assert_eq!(&p[..16], &[0x21; 16]);
        assert_eq!(&p[16..], &[0x43; 16]);
        assert_eq!(s, [0x00, 0x3c, 0x00, 0x48, 0x00, 0x40, 0x00, 0x4c]);
    }

    #[test]
    fn q6_k_scales_move_out_of_the_blocks() {
        let mut block = (0..210).map(|i| i as u8).collect::<Vec<u8>>();
        block[208] = 0x00;
        block[209] = 0x3c;
        let w = WeightData::new(
            WeightFormat::Q6K,
            1,
            256,
            Blob::from_vec(block.clone()),
            "t",
        )
        .unwrap();
        let lay = layout(WeightFormat::Q6K, 256);
        assert_eq!((lay.payload_row, lay.scales_row), (208, 2));
        let (mut p, mut s) = (vec![0u8; lay.payload_row], vec![0u8; lay.scales_row]);
        repack_rows(&w, 0, 1, &mut p, &mut s);
        assert_eq!(p, block[..208]);
        assert_eq!(s, [0x00, 0x3c]);
    }

    #[test]
    fn float_rows_are_padded_to_16_bytes() {
        // odd widths (head_dim 12 models): 72 f16 = 144 bytes, 517 f32 = 2068 → 2080 bytes
        assert_eq!(
            (
                layout(WeightFormat::F16, 72).payload_row,
                layout(WeightFormat::F16, 72).scales_row
            ),
            (144, 0)
        );
        assert_eq!(layout(WeightFormat::F32, 517).payload_row, 2080);
        for cols in 1..100 {
            assert_eq!(
                layout(WeightFormat::F32, cols).payload_row,
                (cols * 4).next_multiple_of(16),
                "f32 × {cols}"
            );
            for f in [WeightFormat::F16, WeightFormat::BF16] {
                assert_eq!(
                    layout(f, cols).payload_row,
                    (cols * 2).next_multiple_of(16),
                    "{f:?} × {cols}"
                );
            }
        }
        // the padding is zeroed
        let w =
            WeightData::new(WeightFormat::F32, 1, 5, Blob::from_vec(vec![0xff; 20]), "t").unwrap();
        let (mut p, mut s) = (vec![0xaau8; 32], vec![]);
        repack_rows(&w, 0, 1, &mut p, &mut s);
        assert_eq!(p[..20], [0xff; 20]);
        assert_eq!(p[20..], [0; 12]);
    }
}
