// Embedding gather: out[t, c] = W[ids[t], c] for the tokens whose id falls in this chunk's
// rows row0..row0+rows. The ids travel in the `x` binding as raw u32 bits.
//   grid: x = ceil(cols / 256), y = n

@group(0) @binding(3) var<storage, read> x: array<f32>;

// x[xo + k .. xo + k + 4], zero past the row's end (float formats pad rows to UNIT).
fn x4(xo: u32, k: u32) -> vec4<f32> {
    let i = xo + k;
    return vec4<f32>(
        select(0.0, x[i], k < p.cols),
        select(0.0, x[i + 1u], k + 1u < p.cols),
        select(0.0, x[i + 2u], k + 2u < p.cols),
        select(0.0, x[i + 3u], k + 3u < p.cols),
    );
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let t = wid.y;
    let c = (wid.x * 64u + li) * 4u;
    let id = bitcast<u32>(x[t]);
    if (c >= p.cols || id < p.row0 || id >= p.row0 + p.rows) {
        return;
    }
    let v = load4(id - p.row0, c);
    for (var i = 0u; i < 4u; i++) {
        if (c + i < p.cols) {
            out[t * p.out_stride + c + i] = v[i];
        }
    }
}
