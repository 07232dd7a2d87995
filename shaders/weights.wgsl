// Shared declarations of the kernels that read a weight matrix (matvec, matmul, embed).
// Each such kernel is compiled as: one `weights_<format>.wgsl` (binds w, ws; defines UNIT,
// load4, and a dot unit of UNIT weights: `struct Unit`, `unit_at(row, u)` loading and
// decoding unit u of a row, `unit_x(unit, u, xo)` its dot with x̂ from xo) + this file + the
// kernel. A unit is decoded once and dotted with several tokens' x in matvec.wgsl.
//
// Buffer layout (elements are f32 unless said otherwise):
//   binding 0  p:   Params (uniform: a 64-byte window at this dispatch's slot of the params ring)
//   binding 1  w:   weight payload of one chunk of rows, array<vec4<u32>>
//   binding 2  ws:  per-block scales of that chunk (format-specific), array<u32>
//   binding 3  x:   input activations [n, x_stride] (declared by each kernel)
//   binding 4  out: output [n, out_stride]; this chunk writes columns out_off..out_off+rows

struct Params {
    n: u32,          // tokens (rows of x)
    rows: u32,       // weight rows in this chunk
    cols: u32,       // weight columns = length of each x row that is used
    nb: u32,         // dot units (UNIT weights each) per weight row, padding included
    x_stride: u32,   // elements between rows of x
    out_stride: u32, // elements between rows of out
    out_off: u32,    // first output column written by this chunk
    grid_x: u32,     // workgroups along x, when a 1-D grid is folded into 2-D
    row0: u32,       // index of this chunk's first row in the whole matrix
    // matvec.wgsl's fused ops only (zero elsewhere)
    x_row: u32,      // the row of x a one-token product reads
    eps: f32,        // NORM
    head_dim: u32,   // ROPE
    pos: u32,        // KV: the cache row written
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
// Binding 3 (x) and `fn x4(xo, k) -> vec4<f32>` (x[xo + k .. xo + k + 4], zero past the
// row's end) come with each kernel: matvec reads x as vec4s, matmul and embed as scalars.
// matvec.wgsl binds 5-8 as well, for what it fuses.

// Σ q[i] · x̂[k + 4i ..] over a unit of 32 weights, in this order (the formats whose unit
// is 32 weights scaled by one factor).
fn dot32(q: array<vec4<f32>, 8>, xo: u32, k: u32) -> f32 {
    return dot(q[0], x4(xo, k)) + dot(q[1], x4(xo, k + 4u))
         + dot(q[2], x4(xo, k + 8u)) + dot(q[3], x4(xo, k + 12u))
         + dot(q[4], x4(xo, k + 16u)) + dot(q[5], x4(xo, k + 20u))
         + dot(q[6], x4(xo, k + 24u)) + dot(q[7], x4(xo, k + 28u));
}

// The four bytes of a word, as integers 0..255.
fn bytes4(v: u32) -> vec4<u32> {
    return (vec4<u32>(v) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(255u);
}

// One f16 of an array of f16 pairs packed in u32 (scales of blocks i = 0, 1, 2, ...).
fn half_at(i: u32) -> f32 {
    let s = unpack2x16float(ws[i / 2u]);
    return select(s.x, s.y, (i & 1u) == 1u);
}
