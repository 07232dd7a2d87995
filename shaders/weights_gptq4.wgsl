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

// A dot unit decoded: q − z for its 32 weights, and d. q − z is a small integer, exact in
// f32, so the sum is over exact weights before one scale.
struct Unit {
    q: array<vec4<f32>, 8>,
    d: f32,
}

fn unit_at(row: u32, u: u32) -> Unit {
    let b = row * p.nb + u;
    let v = w[b];
    let dz = unpack2x16float(ws[b]);
    let z = vec4<f32>(dz.y);
    let q = array(
        nib4(v.x) - z, nib4(v.y) - z, nib4(v.z) - z, nib4(v.w) - z,
        nib4(v.x >> 4u) - z, nib4(v.y >> 4u) - z, nib4(v.z >> 4u) - z, nib4(v.w >> 4u) - z,
    );
    return Unit(q, dz.x);
}

fn unit_x(un: Unit, u: u32, xo: u32) -> f32 {
    return dot32(un.q, xo, u * 32u) * un.d;
}
