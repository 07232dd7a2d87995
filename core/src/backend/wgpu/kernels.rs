//! Compute pipelines, one per kernel and weight format, built from the WGSL in `shaders/`.
//! A weight kernel's module is `weights_<format>.wgsl` + `weights.wgsl` + `<op>.wgsl`, a
//! KV-cache kernel's `kv_<dtype>.wgsl` + `<op>.wgsl`; that concatenation is the only
//! templating there is.

use crate::backend::KvDtype;
use crate::weights::WeightFormat;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    Matvec(WeightFormat),
    Matmul(WeightFormat),
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
        Kernel::Matvec(_) | Kernel::Matmul(_) | Kernel::Embed(_) => &[true, true, true, false],
        Kernel::RmsNorm => &[true, true, false],
        Kernel::Rope => &[false, true],
        Kernel::StoreKv(_) => &[true, true, false, false],
        Kernel::Attention(_) => &[true, true, true, false, false],
        Kernel::AttentionCombine => &[true, false],
        Kernel::SiluMul | Kernel::Add => &[false, true],
        Kernel::Argmax => &[true, false],
        Kernel::Gather => &[true, true, false],
    }
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
        format!("{storage}\n{op}")
    };
    match k {
        Kernel::Matvec(f) => weights(f, shader!("matvec")),
        Kernel::Matmul(f) => weights(f, shader!("matmul")),
        Kernel::Embed(f) => weights(f, shader!("embed")),
        Kernel::RmsNorm => shader!("rms_norm").into(),
        Kernel::Rope => shader!("rope").into(),
        Kernel::StoreKv(d) => kv(d, shader!("store_kv")),
        Kernel::Attention(d) => kv(d, shader!("attention")),
        Kernel::AttentionCombine => shader!("attention_combine").into(),
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
/// (attention's, 44 bytes; params.rs tests that every kernel's fits). Slots in the ring are
/// max(min_uniform_buffer_offset_alignment, PARAMS_SIZE) apart, so the window never reaches
/// past the ring's last slot, even where the alignment is under 256.
pub const PARAMS_SIZE: u64 = 64;

pub fn compile(device: &wgpu::Device, k: Kernel, native_f16: bool) -> Arc<Compiled> {
    let label = format!("{k:?}");
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(&label),
        source: wgpu::ShaderSource::Wgsl(source(k, native_f16).into()),
    });
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
        compilation_options: Default::default(),
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
        let formats = [
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
        ];
        for f in formats {
            kernels.extend([Kernel::Matvec(f), Kernel::Matmul(f), Kernel::Embed(f)]);
        }
        for k in kernels {
            for native in [false, true] {
                let src = source(k, native);
                let module = naga::front::wgsl::parse_str(&src)
                    .unwrap_or_else(|e| panic!("{k:?}: {}", e.emit_to_string(&src)));
                naga::valid::Validator::new(
                    naga::valid::ValidationFlags::all(),
                    naga::valid::Capabilities::all(),
                )
                .validate(&module)
                .unwrap_or_else(|e| panic!("{k:?} (native f16 {native}): {e:?}"));
            }
        }
    }
}
