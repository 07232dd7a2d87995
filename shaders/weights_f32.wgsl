// Weights in f32. Row r holds columns 4u..4u+3 in w[r * nb + u]; rows are zero-padded to a
// multiple of 4 columns. No scales.
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> ws: array<u32>;

const UNIT: u32 = 4u;

fn load4(row: u32, col: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(w[row * p.nb + col / 4u]);
}

// A dot unit decoded: its 4 weights.
struct Unit {
    q: vec4<f32>,
}

fn unit_at(row: u32, u: u32) -> Unit {
    return Unit(load4(row, u * 4u));
}

fn unit_x(un: Unit, u: u32, xo: u32) -> f32 {
    return dot(un.q, x4(xo, u * 4u));
}
