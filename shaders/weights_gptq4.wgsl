// GPTQ 4-bit (AutoGPTQ checkpoints, repacked on load): blocks of 32 weights of one row, in
// the matrix's column order (group-sorted under desc_act; the backend gathers x[perm] first),
// w = d · (q − z) with q a nibble and z the integer zero 0..16 (exact in f16). Byte j of a
// block holds weight j in its low nibble and weight j + 16 in its high nibble. Repacked:
//   w:  block b (= row * nb + u) holds its 16 bytes of nibbles in w[b]
//   ws: ws[b] packs the f16 pair (d, z)
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> ws: array<u32>;

const UNIT: u32 = 32u;

fn nib4(v: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(v) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(15u));
}

fn load4(row: u32, col: u32) -> vec4<f32> {
    let b = row * p.nb + col / 32u;
    let e = col % 32u;
    let v = w[b][(e % 16u) / 4u];
    let q = select(nib4(v), nib4(v >> 4u), e >= 16u);
    let dz = unpack2x16float(ws[b]);
    return (q - dz.y) * dz.x;
}

// q − z is a small integer, exact in f32, so the sum is over exact weights before one scale.
fn unit_dot(row: u32, u: u32, xo: u32) -> f32 {
    let b = row * p.nb + u;
    let v = w[b];
    let k = u * 32u;
    let dz = unpack2x16float(ws[b]);
    let z = vec4<f32>(dz.y);
    let s = dot(nib4(v.x) - z, x4(xo, k)) + dot(nib4(v.y) - z, x4(xo, k + 4u))
          + dot(nib4(v.z) - z, x4(xo, k + 8u)) + dot(nib4(v.w) - z, x4(xo, k + 12u))
          + dot(nib4(v.x >> 4u) - z, x4(xo, k + 16u)) + dot(nib4(v.y >> 4u) - z, x4(xo, k + 20u))
          + dot(nib4(v.z >> 4u) - z, x4(xo, k + 24u)) + dot(nib4(v.w >> 4u) - z, x4(xo, k + 28u));
    return s * dz.x;
}
