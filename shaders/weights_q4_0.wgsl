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

// A dot unit decoded: q − 8 for its 32 weights, and d.
struct Unit {
    q: array<vec4<f32>, 8>,
    d: f32,
}

fn unit_at(row: u32, u: u32) -> Unit {
    let b = row * p.nb + u;
    let v = w[b];
    let q = array(
        nib4(v.x) - 8.0, nib4(v.y) - 8.0, nib4(v.z) - 8.0, nib4(v.w) - 8.0,
        nib4(v.x >> 4u) - 8.0, nib4(v.y >> 4u) - 8.0, nib4(v.z >> 4u) - 8.0, nib4(v.w >> 4u) - 8.0,
    );
    return Unit(q, half_at(b));
}

fn unit_x(un: Unit, u: u32, xo: u32) -> f32 {
    return dot32(un.q, xo, u * 32u) * un.d;
}
