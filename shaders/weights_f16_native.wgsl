enable f16;
// Weights in f16 read as native f16 vectors (adapters with shader-f16). Same bytes as
// weights_f16.wgsl: row r holds columns 8u..8u+7 in w[2 * (r * nb + u)] and the next
// vec4<f16>; rows are zero-padded to a multiple of 8 columns. Products accumulate in f32.
@group(0) @binding(1) var<storage, read> w: array<vec4<f16>>;
@group(0) @binding(2) var<storage, read> ws: array<u32>;

const UNIT: u32 = 8u;

fn load4(row: u32, col: u32) -> vec4<f32> {
    return vec4<f32>(w[row * p.nb * 2u + col / 4u]);
}

// A dot unit decoded: its 8 weights as f32.
struct Unit {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

fn unit_at(row: u32, u: u32) -> Unit {
    let b = (row * p.nb + u) * 2u;
    return Unit(vec4<f32>(w[b]), vec4<f32>(w[b + 1u]));
}

fn unit_x(un: Unit, u: u32, xo: u32) -> f32 {
    let k = u * 8u;
    return dot(un.lo, x4(xo, k)) + dot(un.hi, x4(xo, k + 4u));
}
