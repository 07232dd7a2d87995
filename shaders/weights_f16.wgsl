// Weights in f16, read as packed pairs and widened with unpack2x16float: the path for
// adapters without shader-f16 (Chromium's SwiftShader). Row r holds columns 8u..8u+7 in
// w[r * nb + u]; rows are zero-padded to a multiple of 8 columns. No scales.
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> ws: array<u32>;

const UNIT: u32 = 8u;

fn load4(row: u32, col: u32) -> vec4<f32> {
    let v = w[row * p.nb + col / 8u];
    let h = select(v.xy, v.zw, (col % 8u) == 4u);
    return vec4<f32>(unpack2x16float(h.x), unpack2x16float(h.y));
}

// A dot unit decoded: its 8 weights as f32.
struct Unit {
    lo: vec4<f32>,
    hi: vec4<f32>,
}

fn unit_at(row: u32, u: u32) -> Unit {
    let v = w[row * p.nb + u];
    return Unit(
        vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y)),
        vec4<f32>(unpack2x16float(v.z), unpack2x16float(v.w)),
    );
}

fn unit_x(un: Unit, u: u32, xo: u32) -> f32 {
    let k = u * 8u;
    return dot(un.lo, x4(xo, k)) + dot(un.hi, x4(xo, k + 4u));
}
