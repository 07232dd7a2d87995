// The integer unit of weights_q4_0.wgsl for matvec_q8.wgsl, compiled only into that kernel (so the
// float kernels never need WGSL's packed 4x8 integer dot product).
//
// Unit u's Σ w · x̂ with x̂ quantized (matvec_q8.wgsl): the block's 32 int8 (xa: 0..15, xb:
// 16..31, four per word), their scale dx and Σq. The nibbles are 0..15 as int8, so the −8
// comes out as −8 · Σq.
fn unit_q8(row: u32, u: u32, xa: vec4<u32>, xb: vec4<u32>, dx: f32, qsum: i32) -> f32 {
    let b = row * p.nb + u;
    let v = w[b];
    let lo = v & vec4<u32>(0x0F0F0F0Fu);
    let hi = (v >> vec4<u32>(4u)) & vec4<u32>(0x0F0F0F0Fu);
    let s = dot4I8Packed(lo.x, xa.x) + dot4I8Packed(lo.y, xa.y)
          + dot4I8Packed(lo.z, xa.z) + dot4I8Packed(lo.w, xa.w)
          + dot4I8Packed(hi.x, xb.x) + dot4I8Packed(hi.y, xb.y)
          + dot4I8Packed(hi.z, xb.z) + dot4I8Packed(hi.w, xb.w);
    return half_at(b) * dx * f32(s - 8 * qsum);
}
