// Embedding gather: out[t, c] = W[ids[t], c] for the tokens whose id falls in this chunk's
// rows row0..row0+rows. The ids travel in the `x` binding as raw u32 bits.
//   grid: x = ceil(cols / 256), y = n

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
