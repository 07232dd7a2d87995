//! The uniform parameters of every WGSL kernel (binding 0, `struct Params` in `shaders/`),
//! one `#[repr(C)]` struct per shader, field for field in the shader's order and names.
//!
//! The host writes these bytes into a params slot and the shader reads them through its own
//! declaration, so nothing but the test below ties the two together: it parses each kernel
//! with naga and checks that member names, offsets, scalar types and the struct's size are
//! those of the Rust struct. Every member is a 4-byte scalar, so `repr(C)` lays them out as
//! WGSL does; a vec3/vec4 or nested struct member (16-byte aligned in uniform buffers) would
//! need explicit `_pad` fields here, and the test says where.

use bytemuck::{Pod, Zeroable};

/// `weights.wgsl`: matvec, matmul and embed over one chunk of a weight matrix's rows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Weights {
    pub n: u32,
    pub rows: u32,
    pub cols: u32,
    pub nb: u32,
    pub x_stride: u32,
    pub out_stride: u32,
    pub out_off: u32,
    pub grid_x: u32,
    pub row0: u32,
    pub x_row: u32,
    pub eps: f32,
    pub head_dim: u32,
    pub pos: u32,
}

/// `quantize_q8.wgsl`
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct QuantizeQ8 {
    pub cols: u32,
    pub x_row: u32,
    pub x_stride: u32,
}

/// `rms_norm.wgsl`
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct RmsNorm {
    pub n: u32,
    pub cols: u32,
    pub first: u32,
    pub eps: f32,
}

/// `rope.wgsl`
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Rope {
    pub n: u32,
    pub n_heads: u32,
    pub head_dim: u32,
    pub stride: u32,
    pub interleaved: u32,
    pub grid_x: u32,
}

/// `store_kv.wgsl`
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct StoreKv {
    pub n: u32,
    pub kv_dim: u32,
    pub grid_x: u32,
}

/// `attention.wgsl`
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Attention {
    pub n: u32,
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    pub q_stride: u32,
    pub kv_stride: u32,
    pub out_stride: u32,
    pub scale: f32,
    pub splits: u32,
}

/// `attention_combine.wgsl`
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct AttentionCombine {
    pub n_heads: u32,
    pub head_dim: u32,
    pub splits: u32,
    pub out_stride: u32,
}

/// `kv_rows.wgsl`: one entry of the table the KV kernels read (a storage array, not
/// params).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct KvRow {
    pub row: u32,
    pub base: u32,
    pub pos: u32,
    pub chunk: u32,
    pub splits: u32,
    pub part: u32,
}

/// `silu_mul.wgsl` and `add.wgsl` (two shaders, one layout).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Elementwise {
    pub len: u32,
    pub grid_x: u32,
}

/// `argmax.wgsl`
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Argmax {
    pub cols: u32,
    pub row: u32,
}

/// `gather.wgsl`
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Gather {
    pub n: u32,
    pub cols: u32,
    pub x_stride: u32,
    pub grid_x: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::KvDtype;
    use crate::backend::wgpu::kernels::{Fusion, Kernel, PARAMS_SIZE, source};
    use crate::weights::WeightFormat;
    use naga::{AddressSpace, Scalar, TypeInner};

    /// A Rust field type and the WGSL type it stands for.
    trait Wgsl {
        const SCALAR: Scalar;
    }
    impl Wgsl for u32 {
        const SCALAR: Scalar = Scalar::U32;
    }
    impl Wgsl for f32 {
        const SCALAR: Scalar = Scalar::F32;
    }
    fn scalar<T: Wgsl>(_: &T) -> Scalar {
        T::SCALAR
    }

    /// One Rust field: (name, offset, size, WGSL scalar).
    type Field = (&'static str, usize, usize, Scalar);

    /// The fields of `$ty` as listed, and its size. The list must name every field: a
    /// missing one leaves its WGSL member unmatched (or the sizes unequal) and fails.
    macro_rules! fields {
        ($ty:ident { $($f:ident),* $(,)? }) => {{
            let z = $ty::zeroed();
            let fields: Vec<Field> = vec![$((
                stringify!($f),
                std::mem::offset_of!($ty, $f),
                std::mem::size_of_val(&z.$f),
                scalar(&z.$f),
            )),*];
            (stringify!($ty), fields, std::mem::size_of::<$ty>())
        }};
    }

    /// Compare the uniform at binding 0 of kernel `k` with a Rust struct; returns the
    /// mismatches.
    fn compare(k: Kernel, (name, fields, size): &(&str, Vec<Field>, usize)) -> Vec<String> {
        let src = source(k, false);
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{k:?}: {}", e.emit_to_string(&src)));
        let var = module
            .global_variables
            .iter()
            .map(|(_, v)| v)
            .find(|v| {
                v.binding
                    .as_ref()
                    .is_some_and(|b| b.group == 0 && b.binding == 0)
            })
            .unwrap_or_else(|| panic!("{k:?}: nothing at binding 0"));
        assert_eq!(
            var.space,
            AddressSpace::Uniform,
            "{k:?}: binding 0 is not a uniform"
        );
        let TypeInner::Struct { members, span } = &module.types[var.ty].inner else {
            panic!("{k:?}: binding 0 is not a struct");
        };
        let mut bad = compare_struct(
            &module,
            &format!("{k:?} vs {name}"),
            members,
            *span,
            fields,
            *size,
        );
        // The host binds a PARAMS_SIZE window; some APIs read uniforms in 16-byte rows.
        if (*span as u64).next_multiple_of(16) > PARAMS_SIZE {
            bad.push(format!(
                "{k:?} vs {name}: {span} bytes do not fit the {PARAMS_SIZE}-byte params window"
            ));
        }
        bad
    }

    /// Compare a WGSL struct's members with a Rust struct's fields; returns the mismatches.
    fn compare_struct(
        module: &naga::Module,
        label: &str,
        members: &[naga::StructMember],
        span: u32,
        fields: &[Field],
        size: usize,
    ) -> Vec<String> {
        let at = |what: String| format!("{label}: {what}");
        let mut bad = vec![];
        // WGSL members must each have a Rust field of the same name, offset, size and type.
        for m in members {
            let mname = m.name.as_deref().unwrap_or("?");
            let inner = &module.types[m.ty].inner;
            let msize = inner.size(module.to_ctx()) as usize;
            match fields.iter().find(|f| f.0 == mname) {
                None => bad.push(at(format!(
                    "WGSL member `{mname}` (offset {}) has no Rust field",
                    m.offset
                ))),
                Some(&(_, off, fsize, sc)) => {
                    if off != m.offset as usize || fsize != msize {
                        bad.push(at(format!(
                            "`{mname}` is at {}..{} in WGSL but {off}..{} in Rust (add `_pad` fields for WGSL's alignment)",
                            m.offset,
                            m.offset as usize + msize,
                            off + fsize
                        )));
                    }
                    if *inner != TypeInner::Scalar(sc) {
                        bad.push(at(format!(
                            "`{mname}` is {inner:?} in WGSL, {sc:?} in Rust"
                        )));
                    }
                }
            }
        }
        // Rust fields the shader lacks may only be explicit padding.
        for f in fields.iter().filter(|f| !f.0.starts_with("_pad")) {
            if !members.iter().any(|m| m.name.as_deref() == Some(f.0)) {
                bad.push(at(format!(
                    "Rust field `{}` is not in the WGSL struct",
                    f.0
                )));
            }
        }
        if span as usize != size {
            bad.push(at(format!("WGSL size {span} bytes, Rust size_of {size}")));
        }
        bad
    }

    /// The table entries the host uploads have kv_rows.wgsl's layout, in every kernel that
    /// reads them.
    #[test]
    fn kv_row_matches_the_wgsl_struct() {
        let (name, fields, size) = fields!(KvRow {
            row,
            base,
            pos,
            chunk,
            splits,
            part
        });
        for k in [
            Kernel::StoreKv(KvDtype::F16),
            Kernel::Attention(KvDtype::F32),
            Kernel::AttentionCombine,
        ] {
            let src = source(k, false);
            let module = naga::front::wgsl::parse_str(&src)
                .unwrap_or_else(|e| panic!("{k:?}: {}", e.emit_to_string(&src)));
            let (_, ty) = module
                .types
                .iter()
                .find(|(_, t)| t.name.as_deref() == Some(name))
                .unwrap_or_else(|| panic!("{k:?}: no struct {name}"));
            let TypeInner::Struct { members, span } = &ty.inner else {
                panic!("{k:?}: {name} is not a struct");
            };
            let bad = compare_struct(&module, &format!("{k:?}"), members, *span, &fields, size);
            assert!(bad.is_empty(), "{}", bad.join("\n"));
        }
    }

    /// Every kernel's `Params` (every weight format's build of weights.wgsl) has exactly the
    /// layout of the struct the host fills.
    #[test]
    fn rust_params_match_the_wgsl_structs() {
        let weights = fields!(Weights {
            n,
            rows,
            cols,
            nb,
            x_stride,
            out_stride,
            out_off,
            grid_x,
            row0,
            x_row,
            eps,
            head_dim,
            pos
        });
        let elementwise = fields!(Elementwise { len, grid_x });
        let mut cases = vec![
            (
                Kernel::RmsNorm,
                fields!(RmsNorm {
                    n,
                    cols,
                    first,
                    eps
                }),
            ),
            (
                Kernel::Rope,
                fields!(Rope {
                    n,
                    n_heads,
                    head_dim,
                    stride,
                    interleaved,
                    grid_x
                }),
            ),
            (
                Kernel::StoreKv(KvDtype::F32),
                fields!(StoreKv { n, kv_dim, grid_x }),
            ),
            (
                Kernel::Attention(KvDtype::F32),
                fields!(Attention {
                    n,
                    n_heads,
                    n_kv_heads,
                    head_dim,
                    q_stride,
                    kv_stride,
                    out_stride,
                    scale,
                    splits,
                }),
            ),
            (
                Kernel::AttentionCombine,
                fields!(AttentionCombine {
                    n_heads,
                    head_dim,
                    splits,
                    out_stride
                }),
            ),
            (Kernel::SiluMul, elementwise.clone()),
            (Kernel::Add, elementwise),
            (Kernel::Argmax, fields!(Argmax { cols, row })),
            (
                Kernel::QuantizeQ8,
                fields!(QuantizeQ8 {
                    cols,
                    x_row,
                    x_stride
                }),
            ),
            (
                Kernel::Gather,
                fields!(Gather {
                    n,
                    cols,
                    x_stride,
                    grid_x
                }),
            ),
        ];
        // the f16 cache's kernels take the same params as the f32 cache's
        let f16_cache: Vec<_> = cases
            .iter()
            .filter_map(|(k, f)| match k {
                Kernel::StoreKv(_) => Some((Kernel::StoreKv(KvDtype::F16), f.clone())),
                Kernel::Attention(_) => Some((Kernel::Attention(KvDtype::F16), f.clone())),
                _ => None,
            })
            .collect();
        cases.extend(f16_cache);
        use WeightFormat::*;
        cases.push((Kernel::MatvecQ8(Q4_0), weights.clone()));
        cases.push((Kernel::MatvecQ8(Q8_0), weights.clone()));
        cases.push((Kernel::MatvecQ8(Q4K), weights.clone()));
        for f in [F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4K, Q6K, Gptq4] {
            let matvec = Kernel::Matvec(f, Fusion::default());
            for k in [matvec, Kernel::Matmul(f), Kernel::Embed(f)] {
                cases.push((k, weights.clone()));
            }
        }
        let bad: Vec<String> = cases.iter().flat_map(|(k, s)| compare(*k, s)).collect();
        assert!(
            bad.is_empty(),
            "host and shader params differ:\n{}",
            bad.join("\n")
        );
    }
}
