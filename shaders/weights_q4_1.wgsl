// ggml Q4_1: blocks of 32 weights, w = d · q + m with q a nibble, nibbles as in Q4_0.
// Repacked:
//   w:  block b (= row * nb + u) holds its 16 bytes of nibbles in w[b]
//   ws: ws[b] packs the f16 pair (d, m)
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
    let dm = unpack2x16float(ws[b]);
    return q * dm.x + dm.y;
}

// A dot unit decoded: its 32 nibbles as f32, and (d, m).
struct Unit {
    q: array<vec4<f32>, 8>,
    dm: vec2<f32>,
}

fn unit_at(row: u32, u: u32) -> Unit {
    let b = row * p.nb + u;
    let v = w[b];
    let q = array(
        nib4(v.x), nib4(v.y), nib4(v.z), nib4(v.w),
        nib4(v.x >> 4u), nib4(v.y >> 4u), nib4(v.z >> 4u), nib4(v.w >> 4u),
    );
    return Unit(q, unpack2x16float(ws[b]));
}

fn unit_x(un: Unit, u: u32, xo: u32) -> f32 {
    let k = u * 32u;
    let xa = x4(xo, k); let xb = x4(xo, k + 4u); let xc = x4(xo, k + 8u); let xd = x4(xo, k + 12u);
    let xe = x4(xo, k + 16u); let xf = x4(xo, k + 20u); let xg = x4(xo, k + 24u); let xh = x4(xo, k + 28u);
    let s = dot(un.q[0], xa) + dot(un.q[1], xb) + dot(un.q[2], xc) + dot(un.q[3], xd)
          + dot(un.q[4], xe) + dot(un.q[5], xf) + dot(un.q[6], xg) + dot(un.q[7], xh);
    let sx = dot(xa + xb + xc + xd + xe + xf + xg + xh, vec4<f32>(1.0));
    return un.dm.x * s + un.dm.y * sx;
}
