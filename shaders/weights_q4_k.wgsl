// ggml Q4_K: super-blocks of 256 weights = 8 sub-blocks of 32, 144 bytes each, kept as is:
//   bytes 0..3    f16 d, f16 dmin
//   bytes 4..15   twelve bytes packing 8 six-bit scales and 8 six-bit mins
//   bytes 16..143 nibbles: sub-block 2i takes the low nibbles of bytes 16+32i..16+32i+31,
//                 sub-block 2i+1 their high nibbles
// w = d · scale_j · q − dmin · min_j. Super-block s of row r is w[9 * (r * nb / 8 + s) ..][..9].
// A dot unit is one sub-block of 32 weights. No separate scales (ws unused).
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> ws: array<u32>;

const UNIT: u32 = 32u;

fn q4k_word(blk: u32, i: u32) -> u32 {
    return w[blk * 9u + i / 4u][i % 4u];
}

fn q4k_byte(blk: u32, i: u32) -> u32 {
    return (q4k_word(blk, i / 4u) >> (8u * (i % 4u))) & 255u;
}

// (d · scale_j, dmin · min_j) of sub-block j, as ggml's get_scale_min_k4.
fn q4k_dm(blk: u32, j: u32) -> vec2<f32> {
    var sc: u32;
    var mn: u32;
    if (j < 4u) {
        sc = q4k_byte(blk, 4u + j) & 63u;
        mn = q4k_byte(blk, 8u + j) & 63u;
    } else {
        sc = (q4k_byte(blk, 8u + j) & 15u) | ((q4k_byte(blk, j) >> 6u) << 4u);
        mn = (q4k_byte(blk, 8u + j) >> 4u) | ((q4k_byte(blk, 4u + j) >> 6u) << 4u);
    }
    let dd = unpack2x16float(q4k_word(blk, 0u));
    return vec2<f32>(dd.x * f32(sc), dd.y * f32(mn));
}

fn q4k_nib4(v: u32, high: bool) -> vec4<f32> {
    let s = select(0u, 4u, high);
    return vec4<f32>((vec4<u32>(v) >> (vec4<u32>(0u, 8u, 16u, 24u) + s)) & vec4<u32>(15u));
}

fn load4(row: u32, col: u32) -> vec4<f32> {
    let blk = row * (p.nb / 8u) + col / 256u;
    let e = col % 256u;
    let j = e / 32u;
    let word = 4u + 8u * (j / 2u) + (e % 32u) / 4u;
    let dm = q4k_dm(blk, j);
    return q4k_nib4(q4k_word(blk, word), (j & 1u) == 1u) * dm.x - dm.y;
}

// A dot unit (one sub-block) decoded: its 32 nibbles as f32, and (d · scale, dmin · min).
struct Unit {
    q: array<vec4<f32>, 8>,
    dm: vec2<f32>,
}

fn unit_at(row: u32, u: u32) -> Unit {
    let blk = row * (p.nb / 8u) + u / 8u;
    let j = u % 8u;
    let high = (j & 1u) == 1u;
    let base = blk * 9u + 1u + 2u * (j / 2u); // vec4 holding the sub-block's first nibbles
    let v0 = w[base];
    let v1 = w[base + 1u];
    let q = array(
        q4k_nib4(v0.x, high), q4k_nib4(v0.y, high), q4k_nib4(v0.z, high), q4k_nib4(v0.w, high),
        q4k_nib4(v1.x, high), q4k_nib4(v1.y, high), q4k_nib4(v1.z, high), q4k_nib4(v1.w, high),
    );
    return Unit(q, q4k_dm(blk, j));
}

fn unit_x(un: Unit, u: u32, xo: u32) -> f32 {
    let k = u * 32u;
    let xa = x4(xo, k); let xb = x4(xo, k + 4u); let xc = x4(xo, k + 8u); let xd = x4(xo, k + 12u);
    let xe = x4(xo, k + 16u); let xf = x4(xo, k + 20u); let xg = x4(xo, k + 24u); let xh = x4(xo, k + 28u);
    let s = dot(un.q[0], xa) + dot(un.q[1], xb) + dot(un.q[2], xc) + dot(un.q[3], xd)
          + dot(un.q[4], xe) + dot(un.q[5], xf) + dot(un.q[6], xg) + dot(un.q[7], xh);
    let sx = dot(xa + xb + xc + xd + xe + xf + xg + xh, vec4<f32>(1.0));
    return un.dm.x * s - un.dm.y * sx;
}
