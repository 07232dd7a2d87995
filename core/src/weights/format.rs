//! Storage formats of weight matrices. Quantized formats are ggml's block layouts, byte for
//! byte, so GGUF tensors are used exactly as mapped.

use crate::{Error, Result};
use half::{bf16, f16};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    F32,
    F16,
    BF16,
    /// 32 weights: f16 scale `d`, 32 × i8. w = d·q
    Q8_0,
    /// 32 weights: f16 scale `d`, 16 bytes of nibbles. w = d·(q − 8)
    Q4_0,
    /// 32 weights: f16 `d`, f16 `m`, 16 bytes of nibbles. w = d·q + m
    Q4_1,
    /// 256 weights in 8 sub-blocks of 32 with 6-bit scales and mins.
    Q4K,
    /// 256 weights in 16 sub-blocks of 16 with 8-bit scales; 6-bit quants.
    Q6K,
    /// GPTQ 4-bit (AutoGPTQ checkpoints, repacked on load by `weights::gptq`): 32 weights of
    /// one output row, in the matrix's (possibly permuted) column order: f16 scale `d`, f16
    /// zero `z` (an integer 0..=16, exact in f16), then 16 bytes of nibbles in Q4_0's order
    /// (byte j: weight j low, weight j + 16 high). w = d·(q − z). Not a ggml type: it has no
    /// GGUF id and is never written to GGUF.
    Gptq4,
}

/// The names `--quantize`, `quantize=` and `quantize:` take (llama.cpp's type names).
impl std::str::FromStr for WeightFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<WeightFormat> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "q4_0" => WeightFormat::Q4_0,
            "q4_1" => WeightFormat::Q4_1,
            "q8_0" => WeightFormat::Q8_0,
            "q4_k" | "q4_k_m" | "q4k" => WeightFormat::Q4K,
            "q6_k" | "q6k" => WeightFormat::Q6K,
            "f16" => WeightFormat::F16,
            other => {
                return Err(Error::arg(
                    "quantize",
                    format!("unknown type `{other}` (q4_0, q4_1, q8_0, q4_k, q6_k, f16)"),
                ));
            }
        })
    }
}

impl WeightFormat {
    /// Weights per block.
    pub fn block_elems(self) -> usize {
        match self {
            WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => 1,
            WeightFormat::Q8_0 | WeightFormat::Q4_0 | WeightFormat::Q4_1 | WeightFormat::Gptq4 => {
                32
            }
            WeightFormat::Q4K | WeightFormat::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            WeightFormat::F32 => 4,
            WeightFormat::F16 | WeightFormat::BF16 => 2,
            WeightFormat::Q8_0 => 34,
            WeightFormat::Q4_0 => 18,
            WeightFormat::Q4_1 | WeightFormat::Gptq4 => 20,
            WeightFormat::Q4K => 144,
            WeightFormat::Q6K => 210,
        }
    }

    pub fn is_quantized(self) -> bool {
        self.block_elems() > 1
    }

    pub fn row_bytes(self, cols: usize, name: &str) -> Result<usize> {
        let b = self.block_elems();
        if cols % b != 0 {
            return Err(Error::load(
                name,
                format!(
                    "{self:?} needs rows that are a multiple of {b} weights, this one has {cols}"
                ),
            ));
        }
        Ok(cols / b * self.block_bytes())
    }

    /// Whether the format is one of ggml's types (everything but `Gptq4`), so it can be
    /// written to GGUF.
    pub fn is_ggml(self) -> bool {
        self != WeightFormat::Gptq4
    }

    /// ggml's type id, as written in GGUF tensor infos.
    ///
    /// # Panics
    /// For `Gptq4`, which has no ggml type; check `is_ggml` first (the GGUF writer does).
    pub fn ggml_type(self) -> u32 {
        match self {
            WeightFormat::Gptq4 => {
                panic!("GPTQ 4-bit weights have no ggml type and cannot be written to GGUF")
            }
            WeightFormat::F32 => 0,
            WeightFormat::F16 => 1,
            WeightFormat::Q4_0 => 2,
            WeightFormat::Q4_1 => 3,
            WeightFormat::Q8_0 => 8,
            WeightFormat::Q4K => 12,
            WeightFormat::Q6K => 14,
            WeightFormat::BF16 => 30,
        }
    }

    pub fn from_ggml_type(t: u32) -> Option<Self> {
        Some(match t {
            0 => WeightFormat::F32,
            1 => WeightFormat::F16,
            2 => WeightFormat::Q4_0,
            3 => WeightFormat::Q4_1,
            8 => WeightFormat::Q8_0,
            12 => WeightFormat::Q4K,
            14 => WeightFormat::Q6K,
            30 => WeightFormat::BF16,
            _ => return None,
        })
    }

    /// ggml's name for a type id, for error messages about unsupported types.
    pub fn ggml_type_name(t: u32) -> String {
        const NAMES: [&str; 31] = [
            "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
            "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
            "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M",
            "BF16",
        ];
        NAMES
            .get(t as usize)
            .map(|s| s.to_string())
            .unwrap_or_else(|| format!("type {t}"))
    }

    /// Decode `bytes` (whole blocks) into `out`. Float formats are converted here;
    /// quantized blocks are decoded by candle's ggml-compatible kernels.
    pub fn dequantize(self, bytes: &[u8], out: &mut [f32]) {
        match self {
            WeightFormat::F32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            WeightFormat::F16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            WeightFormat::BF16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            WeightFormat::Gptq4 => {
                for (o, blk) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(20)) {
                    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                    let z = f16::from_le_bytes([blk[2], blk[3]]).to_f32();
                    for (j, q) in blk[4..].iter().enumerate() {
                        o[j] = d * ((q & 15) as f32 - z);
                        o[j + 16] = d * ((q >> 4) as f32 - z);
                    }
                }
            }
            _ => crate::weights::ggml::dequantize(self, bytes, out),
        }
    }
}
