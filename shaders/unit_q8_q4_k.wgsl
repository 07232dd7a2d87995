// The integer unit of weights_q4_k.wgsl for matvec_q8.wgsl, compiled only into that kernel (so the
// float kernels never need WGSL's packed 4x8 integer dot product).
//
// Unit u's Σ w · x̂ with x̂ quantized (matvec_q8.wgsl): the sub-block's 32 int8 (xa: 0..15,
// xb: 16..31, four per word), their scale dx and Σq. Its nibbles are 0..15 as int8, so
// w = d·scale·q − dmin·min sums to d·scale·dx·Σ q·q_x − dmin·min·dx·Σq.
fn unit_q8(row: u32, u: u32, xa: vec4<u32>, xb: vec4<u32>, dx: f32, qsum: i32) -> f32 {
    let blk = row * (p.nb / 8u) + u / 8u;
    let j = u % 8u;
    let base = blk * 9u + 1u + 2u * (j / 2u);
    let shift = vec4<u32>(select(0u, 4u, (j & 1u) == 1u));
    let lo = (w[base] >> shift) & vec4<u32>(0x0F0F0F0Fu);
    let hi = (w[base + 1u] >> shift) & vec4<u32>(0x0F0F0F0Fu);
    let s = dot4I8Packed(lo.x, xa.x) + dot4I8Packed(lo.y, xa.y)
          + dot4I8Packed(lo.z, xa.z) + dot4I8Packed(lo.w, xa.w)
          + dot4I8Packed(hi.x, xb.x) + dot4I8Packed(hi.y, xb.y)
          + dot4I8Packed(hi.z, xb.z) + dot4I8Packed(hi.w, xb.w);
    let dm = q4k_dm(blk, j);
    return dx * (dm.x * f32(s) - dm.y * f32(qsum));
}
