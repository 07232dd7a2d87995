//! Compute pipelines, one per kernel and weight format, built from the WGSL in `shaders/`.
//! A weight kernel's module is `weights_<format>.wgsl` + `weights.wgsl` + `<op>.wgsl`, a
//! KV-cache kernel's `kv_<dtype>.wgsl` + `kv_rows.wgsl` + `<op>.wgsl`; that concatenation
//! is the only templating there is.

use crate::backend::KvDtype;
use crate::weights::{RopeStyle, WeightFormat};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// A one-token product with the ops `Fusion` names folded in (matvec.wgsl).
    Matvec(WeightFormat, Fusion),
    Matmul(WeightFormat),
    /// A one-token product over x̂ quantized to int8 (matvec_q8.wgsl; formats with an
    /// integer unit, `has_q8_unit`: Q4_0, Q8_0, Q4_K).
    MatvecQ8(WeightFormat),
    /// One row of x quantized to int8 blocks for MatvecQ8.
    QuantizeQ8,
    Embed(WeightFormat),
    RmsNorm,
    Rope,
    StoreKv(KvDtype),
    Attention(KvDtype),
    /// Merges the partial results of split decode attention.
    AttentionCombine,
    SiluMul,
    Add,
    Argmax,
    /// x[perm] before the product with a column-permuted (GPTQ act-order) matrix.
    Gather,
}

/// What matvec.wgsl fuses into a product: its pipeline constants (see the shader's header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Fusion {
    /// RMSNorm of the input, before the product.
    pub norm: bool,
    /// RoPE of the output rows, and in which pairs.
    pub rope: Option<RopeStyle>,
    /// The output rows also stored as one row of a KV cache of this dtype.
    pub kv: Option<KvDtype>,
    /// The output added to a residual stream.
    pub add: bool,
    /// The output is SwiGLU's `up`: the gate becomes silu(gate) · up.
    pub silu: bool,
    /// Any number of tokens, each summed as alone, with nothing fused.
    pub multi: bool,
}

impl Kernel {
    /// A short name for profiles: the shader, its weight or cache format, what is fused.
    pub fn label(self) -> String {
        match self {
            Kernel::Matvec(f, fusion) => {
                let mut parts = vec![];
                for (on, name) in [
                    (fusion.multi, "multi"),
                    (fusion.norm, "norm"),
                    (fusion.rope.is_some(), "rope"),
                    (fusion.kv.is_some(), "kv"),
                    (fusion.add, "add"),
                    (fusion.silu, "silu"),
                ] {
                    if on {
                        parts.push(name);
                    }
                }
                let fused = if parts.is_empty() {
                    String::new()
                } else {
                    format!(" {}", parts.join("+"))
                };
                format!("matvec {f:?}{fused}")
            }
            Kernel::Matmul(f) => format!("matmul {f:?}"),
            Kernel::MatvecQ8(f) => format!("matvec {f:?} int8 x"),
            Kernel::Embed(f) => format!("embed {f:?}"),
            Kernel::StoreKv(kv) => format!("store_kv {kv}"),
            Kernel::Attention(kv) => format!("attention {kv}"),
            other => format!("{other:?}"),
        }
    }
}

impl Fusion {
    fn constants(self) -> [(&'static str, f64); 6] {
        let rope = match self.rope {
            None => 0.0,
            Some(RopeStyle::Half) => 1.0,
            Some(RopeStyle::Interleaved) => 2.0,
        };
        let kv = match self.kv {
            None => 0.0,
            Some(KvDtype::F32) => 1.0,
            Some(KvDtype::F16) => 2.0,
        };
        let flag = |b: bool| if b { 1.0 } else { 0.0 };
        [
            ("NORM", flag(self.norm)),
            ("ROPE", rope),
            ("KV", kv),
            ("ADD", flag(self.add)),
            ("SILU", flag(self.silu)),
            ("MULTI", flag(self.multi)),
        ]
    }
}

macro_rules! shader {
    ($name:literal) => {
        include_str!(concat!("../../../../shaders/", $name, ".wgsl"))
    };
}

fn format_source(f: WeightFormat, native_f16: bool) -> &'static str {
    match f {
        WeightFormat::F32 => shader!("weights_f32"),
        WeightFormat::F16 if native_f16 => shader!("weights_f16_native"),
        WeightFormat::F16 => shader!("weights_f16"),
        WeightFormat::BF16 => shader!("weights_bf16"),
        WeightFormat::Q8_0 => shader!("weights_q8_0"),
        WeightFormat::Q4_0 => shader!("weights_q4_0"),
        WeightFormat::Q4_1 => shader!("weights_q4_1"),
        WeightFormat::Q4K => shader!("weights_q4_k"),
        WeightFormat::Q6K => shader!("weights_q6_k"),
        WeightFormat::Gptq4 => shader!("weights_gptq4"),
    }
}

/// Access of bindings 1.. in order: true = read-only storage, false = read_write.
fn bindings(k: Kernel) -> &'static [bool] {
    match k {
        // w, ws, x, out, then matvec.wgsl's norm_w, xn, table, aux
        Kernel::Matvec(..) => &[true, true, true, false, true, false, true, false],
        Kernel::Matmul(_) | Kernel::Embed(_) | Kernel::MatvecQ8(_) => &[true, true, true, false],
        Kernel::QuantizeQ8 => &[true, false],
        Kernel::RmsNorm => &[true, true, false],
        Kernel::Rope => &[false, true],
        // ..., then kv_rows.wgsl's table
        Kernel::StoreKv(_) => &[true, true, false, false, true],
        Kernel::Attention(_) => &[true, true, true, false, false, true],
        Kernel::AttentionCombine => &[true, false, true],
        Kernel::SiluMul | Kernel::Add => &[false, true],
        Kernel::Argmax => &[true, false],
        Kernel::Gather => &[true, true, false],
    }
}

/// `unit_q8` of a format, the integer unit matvec_q8.wgsl needs, where it has one.
fn q8_unit_source(f: WeightFormat) -> Option<&'static str> {
    match f {
        WeightFormat::Q4_0 => Some(shader!("unit_q8_q4_0")),
        WeightFormat::Q8_0 => Some(shader!("unit_q8_q8_0")),
        WeightFormat::Q4K => Some(shader!("unit_q8_q4_k")),
        _ => None,
    }
}

/// Whether matvec_q8.wgsl runs on a format.
pub fn has_q8_unit(f: WeightFormat) -> bool {
    q8_unit_source(f).is_some()
}

pub fn source(k: Kernel, native_f16: bool) -> String {
    let weights = |f, op: &str| {
        format!(
            "{}\n{}\n{}",
            format_source(f, native_f16),
            shader!("weights"),
            op
        )
    };
    let kv = |d, op: &str| {
        let storage = match d {
            KvDtype::F32 => shader!("kv_f32"),
            KvDtype::F16 => shader!("kv_f16"),
        };
        format!("{storage}\n{}\n{op}", shader!("kv_rows"))
    };
    match k {
        Kernel::Matvec(f, _) => weights(f, shader!("matvec")),
        Kernel::Matmul(f) => weights(f, shader!("matmul")),
        Kernel::MatvecQ8(f) => {
            let unit = q8_unit_source(f).unwrap_or_default();
            weights(f, &format!("{unit}\n{}", shader!("matvec_q8")))
        }
        Kernel::QuantizeQ8 => shader!("quantize_q8").into(),
        Kernel::Embed(f) => weights(f, shader!("embed")),
        Kernel::RmsNorm => shader!("rms_norm").into(),
        Kernel::Rope => shader!("rope").into(),
        Kernel::StoreKv(d) => kv(d, shader!("store_kv")),
        Kernel::Attention(d) => kv(d, shader!("attention")),
        Kernel::AttentionCombine => {
            format!("{}\n{}", shader!("kv_rows"), shader!("attention_combine"))
        }
        Kernel::SiluMul => shader!("silu_mul").into(),
        Kernel::Add => shader!("add").into(),
        Kernel::Argmax => shader!("argmax").into(),
        Kernel::Gather => shader!("gather").into(),
    }
}

pub struct Compiled {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    pub n_storage: usize,
}

/// Size of the uniform window bound at binding 0: room for the largest `Params`
/// (weights.wgsl's, 52 bytes; params.rs tests that every kernel's fits). Slots in the ring are
/// max(min_uniform_buffer_offset_alignment, PARAMS_SIZE) apart, so the window never reaches
/// past the ring's last slot, even where the alignment is under 256.
pub const PARAMS_SIZE: u64 = 64;

pub fn compile(device: &wgpu::Device, k: Kernel, native_f16: bool) -> Arc<Compiled> {
    let label = format!("{k:?}");
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(&label),
        source: wgpu::ShaderSource::Wgsl(source(k, native_f16).into()),
    });
    let constants = match k {
        Kernel::Matvec(_, fusion) => fusion.constants().to_vec(),
        _ => vec![],
    };
    let access = bindings(k);
    let mut entries = vec![wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: None,
        },
        count: None,
    }];
    for (i, read_only) in access.iter().enumerate() {
        entries.push(wgpu::BindGroupLayoutEntry {
            binding: i as u32 + 1,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage {
                    read_only: *read_only,
                },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        });
    }
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(&label),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(&label),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(&label),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some("main"),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &constants,
            ..Default::default()
        },
        cache: None,
    });
    Arc::new(Compiled {
        pipeline,
        layout,
        n_storage: access.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel, for every weight format, parses and validates with naga (no GPU needed).
    #[test]
    fn all_shaders_validate() {
        let mut kernels = vec![
            Kernel::Gather,
            Kernel::RmsNorm,
            Kernel::Rope,
            Kernel::StoreKv(KvDtype::F32),
            Kernel::StoreKv(KvDtype::F16),
            Kernel::Attention(KvDtype::F32),
            Kernel::Attention(KvDtype::F16),
            Kernel::AttentionCombine,
            Kernel::SiluMul,
            Kernel::Add,
            Kernel::Argmax,
            Kernel::QuantizeQ8,
        ];
        for f in FORMATS.into_iter().filter(|f| has_q8_unit(*f)) {
            kernels.push(Kernel::MatvecQ8(f));
        }
        for f in FORMATS {
            let matvec = Kernel::Matvec(f, Fusion::default());
            kernels.extend([matvec, Kernel::Matmul(f), Kernel::Embed(f)]);
        }
        for k in kernels {
            for native in [false, true] {
                validate(k, native);
            }
        }
    }

    /// Every fusion the fuse pass makes, for every format, specializes (its pipeline
    /// constants applied, as a device does at pipeline creation), validates and compiles
    /// to SPIR-V.
    #[test]
    fn every_fused_matvec_specializes_and_compiles() {
        let mut fusions = vec![];
        for rope in [None, Some(RopeStyle::Half), Some(RopeStyle::Interleaved)] {
            fusions.push(Fusion {
                norm: true,
                rope,
                ..Fusion::default()
            });
            for kv in [KvDtype::F32, KvDtype::F16] {
                fusions.push(Fusion {
                    rope,
                    kv: Some(kv),
                    ..Fusion::default()
                });
            }
        }
        fusions.extend([
            Fusion {
                add: true,
                ..Fusion::default()
            },
            Fusion {
                silu: true,
                ..Fusion::default()
            },
            Fusion {
                multi: true,
                ..Fusion::default()
            },
        ]);
        for f in FORMATS {
            for &fusion in &fusions {
                for native in [false, true] {
                    let k = Kernel::Matvec(f, fusion);
                    let (module, info) = validate(k, native);
                    let constants: naga::back::PipelineConstants = fusion
                        .constants()
                        .iter()
                        .map(|&(name, v)| (name.to_string(), v))
                        .collect();
                    let (module, info) = naga::back::pipeline_constants::process_overrides(
                        &module,
                        &info,
                        Some((naga::ShaderStage::Compute, "main")),
                        &constants,
                    )
                    .unwrap_or_else(|e| panic!("{k:?}: {e:?}"));
                    naga::back::spv::write_vec(&module, &info, &Default::default(), None)
                        .unwrap_or_else(|e| panic!("{k:?} (native f16 {native}): {e:?}"));
                }
            }
        }
    }

    /// The host's token groups are the shader's.
    /// Browsers without WGSL's packed_4x8_integer_dot_product still compile every kernel
    /// a model runs by default: only the int8 experiment uses it.
    #[test]
    fn only_the_int8_product_needs_integer_dots() {
        for f in FORMATS {
            let matvec = Kernel::Matvec(f, Fusion::default());
            for k in [matvec, Kernel::Matmul(f), Kernel::Embed(f)] {
                for native in [false, true] {
                    assert!(!source(k, native).contains("dot4I8Packed"), "{k:?}");
                }
            }
        }
    }

    #[test]
    fn matvec_groups_tokens_as_the_host_dispatches_them() {
        let tokens = format!("const TOKENS: u32 = {}u;", super::super::MATVEC_TOKENS);
        assert!(
            shader!("matvec").contains(&tokens),
            "matvec.wgsl lacks `{tokens}`"
        );
    }

    const FORMATS: [WeightFormat; 9] = [
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::BF16,
        WeightFormat::Q8_0,
        WeightFormat::Q4_0,
        WeightFormat::Q4_1,
        WeightFormat::Q4K,
        WeightFormat::Q6K,
        WeightFormat::Gptq4,
    ];

    fn validate(k: Kernel, native: bool) -> (naga::Module, naga::valid::ModuleInfo) {
        let src = source(k, native);
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{k:?}: {}", e.emit_to_string(&src)));
        let info = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{k:?} (native f16 {native}): {e:?}"));
        (module, info)
    }
}
