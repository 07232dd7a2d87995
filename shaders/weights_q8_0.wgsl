// ggml Q8_0: blocks of 32 weights, w = d · q with q an int8. Repacked for aligned loads:
//   w:  block b (= row * nb + u) holds its 32 int8 in w[2b] and w[2b + 1], in order
//   ws: the f16 scales d, two per u32, block b at half_at(b)
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> ws: array<u32>;

const UNIT: u32 = 32u;

fn i8x4(v: u32) -> vec4<f32> {
    return vec4<f32>(vec4<i32>(
        bitcast<i32>(v << 24u), bitcast<i32>(v << 16u), bitcast<i32>(v << 8u), bitcast<i32>(v),
    ) >> vec4<u32>(24u));
}

fn load4(row: u32, col: u32) -> vec4<f32> {
    let b = row * p.nb + col / 32u;
    let i = (col % 32u) / 4u;
    return i8x4(w[2u * b + i / 4u][i % 4u]) * half_at(b);
}

// A dot unit decoded: its 32 int8 as f32, and d.
struct Unit {
    q: array<vec4<f32>, 8>,
    d: f32,
}

fn unit_at(row: u32, u: u32) -> Unit {
    let b = row * p.nb + u;
    let lo = w[2u * b];
    let hi = w[2u * b + 1u];
    let q = array(
        i8x4(lo.x), i8x4(lo.y), i8x4(lo.z), i8x4(lo.w),
        i8x4(hi.x), i8x4(hi.y), i8x4(hi.z), i8x4(hi.w),
    );
    return Unit(q, half_at(b));
}

fn unit_x(un: Unit, u: u32, xo: u32) -> f32 {
    return dot32(un.q, xo, u * 32u) * un.d;
}
