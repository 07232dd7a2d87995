// ggml Q6_K: super-blocks of 256 weights, w = d · scale · (q − 32) with q six bits: the low
// four in `ql`, the high two in `qh`, and an int8 scale per 16 weights. Repacked without d:
//   w:  super-block s (= row * nb / 8 + s') is w[13s ..][..13] = 208 bytes:
//       ql bytes 0..127, qh bytes 128..191, scales bytes 192..207
//   ws: the f16 d of each super-block, two per u32, at half_at(s)
// Within each half h of 128 weights, group g of 32 (weights 128h + 32g + l, l < 32) reads
// ql byte 64h + 32(g & 1) + l (low nibble for g < 2, high for g >= 2), bits 2g..2g+1 of
// qh byte 32h + l, and scale 8h + 2g + l / 16. A dot unit is one such group.
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> ws: array<u32>;

const UNIT: u32 = 32u;

fn q6k_word(blk: u32, i: u32) -> u32 {
    return w[blk * 13u + i / 4u][i % 4u];
}

fn q6k_scale(blk: u32, i: u32) -> f32 {
    let b = (q6k_word(blk, 48u + i / 4u) >> (8u * (i % 4u))) & 255u;
    return f32(bitcast<i32>(b << 24u) >> 24u);
}

// Four consecutive six-bit values (minus 32) of group g in half h, at l = 4i..4i+3.
fn q6k_q4(blk: u32, h: u32, g: u32, i: u32) -> vec4<f32> {
    let lw = q6k_word(blk, 16u * h + 8u * (g & 1u) + i);
    let hw = q6k_word(blk, 32u + 8u * h + i);
    let sh = vec4<u32>(0u, 8u, 16u, 24u);
    let lo = (vec4<u32>(lw) >> (sh + select(0u, 4u, g >= 2u))) & vec4<u32>(15u);
    let hi = (vec4<u32>(hw) >> (sh + 2u * g)) & vec4<u32>(3u);
    return vec4<f32>(lo | (hi << vec4<u32>(4u))) - 32.0;
}

fn load4(row: u32, col: u32) -> vec4<f32> {
    let blk = row * (p.nb / 8u) + col / 256u;
    let e = col % 256u;
    let h = e / 128u;
    let g = (e % 128u) / 32u;
    let l = e % 32u;
    return q6k_q4(blk, h, g, l / 4u) * (half_at(blk) * q6k_scale(blk, 8u * h + 2u * g + l / 16u));
}

// A dot unit (one group) decoded: its 32 values q − 32 as f32, d, and the two scales of
// its halves.
struct Unit {
    q: array<vec4<f32>, 8>,
    d: f32,
    sc: vec2<f32>,
}

fn unit_at(row: u32, u: u32) -> Unit {
    let blk = row * (p.nb / 8u) + u / 8u;
    let h = (u % 8u) / 4u;
    let g = u % 4u;
    let q = array(
        q6k_q4(blk, h, g, 0u), q6k_q4(blk, h, g, 1u), q6k_q4(blk, h, g, 2u), q6k_q4(blk, h, g, 3u),
        q6k_q4(blk, h, g, 4u), q6k_q4(blk, h, g, 5u), q6k_q4(blk, h, g, 6u), q6k_q4(blk, h, g, 7u),
    );
    let sc = 8u * h + 2u * g;
    return Unit(q, half_at(blk), vec2<f32>(q6k_scale(blk, sc), q6k_scale(blk, sc + 1u)));
}

fn unit_x(un: Unit, u: u32, xo: u32) -> f32 {
    let k = u * 32u;
    let s0 = dot(un.q[0], x4(xo, k)) + dot(un.q[1], x4(xo, k + 4u))
           + dot(un.q[2], x4(xo, k + 8u)) + dot(un.q[3], x4(xo, k + 12u));
    let s1 = dot(un.q[4], x4(xo, k + 16u)) + dot(un.q[5], x4(xo, k + 20u))
           + dot(un.q[6], x4(xo, k + 24u)) + dot(un.q[7], x4(xo, k + 28u));
    return un.d * (un.sc.x * s0 + un.sc.y * s1);
}
