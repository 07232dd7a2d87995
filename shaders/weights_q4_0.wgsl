// ggml Q4_0: blocks of 32 weights, w = d · (q − 8) with q a nibble. Byte j of a block holds
// weight j in its low nibble and weight j + 16 in its high nibble. Repacked:
//   w:  block b (= row * nb + u) holds its 16 bytes of nibbles in w[b]
//   ws: the f16 scales d, two per u32, block b at half_at(b)
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
    return (q - 8.0) * half_at(b);
}

fn unit_dot(row: u32, u: u32, xo: u32) -> f32 {
    let b = row * p.nb + u;
    let v = w[b];
    let k = u * 32u;
    let s = dot(nib4(v.x) - 8.0, x4(xo, k)) + dot(nib4(v.y) - 8.0, x4(xo, k + 4u))
          + dot(nib4(v.z) - 8.0, x4(xo, k + 8u)) + dot(nib4(v.w) - 8.0, x4(xo, k + 12u))
          + dot(nib4(v.x >> 4u) - 8.0, x4(xo, k + 16u)) + dot(nib4(v.y >> 4u) - 8.0, x4(xo, k + 20u))
          + dot(nib4(v.z >> 4u) - 8.0, x4(xo, k + 24u)) + dot(nib4(v.w >> 4u) - 8.0, x4(xo, k + 28u));
    return s * half_at(b);
}
