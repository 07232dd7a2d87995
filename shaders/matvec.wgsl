// Matrix-vector product for decode: out[out_off + r] = Σ_k W[r, k] · x[k], one token.
// One workgroup per weight row; its threads stride over the row's dot units (UNIT weights
// each, see weights_<format>.wgsl) and reduce in workgroup memory. Rows beyond 65535
// workgroups fold into a 2-D grid: r = wid.y * grid_x + wid.x.

// One token's activations as vec4s: row 0 starts at 0, so every unit (a multiple of 4
// weights) starts on a vec4. Past the row's end x is finite (another row, or zero) and
// meets only zero padding of float rows.
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;

fn x4(xo: u32, k: u32) -> vec4<f32> {
    return x[(xo + k) / 4u];
}

const WG: u32 = 64u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row = wid.y * p.grid_x + wid.x;
    if (row >= p.rows) {
        return;
    }
    // four independent units per step, so each thread has several loads in flight
    var acc = 0.0;
    var u = li;
    for (; u + 3u * WG < p.nb; u += 4u * WG) {
        acc += (unit_dot(row, u, 0u) + unit_dot(row, u + WG, 0u)) + (unit_dot(row, u + 2u * WG, 0u) + unit_dot(row, u + 3u * WG, 0u));
    }
    for (; u < p.nb; u += WG) {
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
