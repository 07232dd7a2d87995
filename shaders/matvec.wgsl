// Matrix-vector product for decode: out[out_off + r] = Σ_k W[r, k] · x[k], one token.
// One workgroup per weight row; its threads stride over the row's dot units (UNIT weights
// each, see weights_<format>.wgsl) and reduce in workgroup memory. Rows beyond 65535
// workgroups fold into a 2-D grid: r = wid.y * grid_x + wid.x.

const WG: u32 = 64u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row = wid.y * p.grid_x + wid.x;
    if (row >= p.rows) {
        return;
    }
    var acc = 0.0;
    for (var u = li; u < p.nb; u += WG) {
        acc += unit_dot(row, u, 0u);
    }
    partial[li] = acc;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
    if (li == 0u) {
        out[p.out_off + row] = partial[0];
    }
}
