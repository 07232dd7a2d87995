// Weights in bf16: the top half of an f32, so widening is a shift. Row r holds columns
// 8u..8u+7 in w[r * nb + u] (pairs per u32, low half first); rows are zero-padded to a
// multiple of 8 columns. No scales.
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> ws: array<u32>;

const UNIT: u32 = 8u;

fn bf16x2(v: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(v << 16u), bitcast<f32>(v & 0xffff0000u));
}

fn load4(row: u32, col: u32) -> vec4<f32> {
    let v = w[row * p.nb + col / 8u];
    let h = select(v.xy, v.zw, (col % 8u) == 4u);
    return vec4<f32>(bf16x2(h.x), bf16x2(h.y));
}

// A dot unit decoded: its 8 weights as f32.
struct Unit {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

fn unit_at(row: u32, u: u32) -> Unit {
    let v = w[row * p.nb + u];
    return Unit(vec4<f32>(bf16x2(v.x), bf16x2(v.y)), vec4<f32>(bf16x2(v.z), bf16x2(v.w)));
}

fn unit_x(un: Unit, u: u32, xo: u32) -> f32 {
    let k = u * 8u;
    return dot(un.lo, x4(xo, k)) + dot(un.hi, x4(xo, k + 4u));
}
