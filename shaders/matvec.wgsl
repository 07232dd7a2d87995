// Matrix-vector product for decode: out[out_off + r] = Σ_k W[r, k] · x[k], one token.
// ROWS weight rows per workgroup, LANES threads per row; a row's threads stride over its dot
// units (UNIT weights each, see weights_<format>.wgsl) and reduce in workgroup memory.
// Workgroups beyond 65535 fold into a 2-D grid: group g = wid.y * grid_x + wid.x holds rows
// g * ROWS ..

// One token's activations as vec4s: row 0 starts at 0, so every unit (a multiple of 4
// weights) starts on a vec4. Past the row's end x is finite (another row, or zero) and
// meets only zero padding of float rows.
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;

fn x4(xo: u32, k: u32) -> vec4<f32> {
    return x[(xo + k) / 4u];
}

// ROWS rows per workgroup, LANES threads per row. A row of a 7B matrix is only 2-8 KiB, too
// little to keep a workgroup of its own busy: with one row per workgroup the scheduling and
// the reduction cost more than the loads (6 % of the copy bandwidth on an H100 for Q4_0).
const LANES: u32 = 32u;
const ROWS: u32 = 8u;
const WG: u32 = LANES * ROWS;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row = (wid.y * p.grid_x + wid.x) * ROWS + li / LANES;
    let lane = li % LANES;
    // no early return: every thread must reach the barriers; a row past the end adds nothing
    let units = select(0u, p.nb, row < p.rows);
    // four independent units per step, so each thread has several loads in flight
    var acc = 0.0;
    var u = lane;
    for (; u + 3u * LANES < units; u += 4u * LANES) {
        acc += (unit_dot(row, u, 0u) + unit_dot(row, u + LANES, 0u))
             + (unit_dot(row, u + 2u * LANES, 0u) + unit_dot(row, u + 3u * LANES, 0u));
    }
    for (; u < units; u += LANES) {
        acc += unit_dot(row, u, 0u);
    }
    partial[li] = acc;
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
    if (lane == 0u && row < p.rows) {
        out[p.out_off + row] = partial[li];
    }
}
