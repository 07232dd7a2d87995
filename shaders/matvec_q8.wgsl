// Matrix-vector product for decode with x̂ quantized to int8 blocks (quantize_q8.wgsl), for
// the formats with an integer unit (`unit_q8` in unit_q8_<format>.wgsl: Q4_0, Q8_0, Q4_K). An experiment
// beside matvec.wgsl, on with YANGTUO_WGPU_Q8X=1 for products with nothing fused, to time
// integer dots (dot4I8Packed: OpSDot where the device has it) against float units:
//   s[r] = Σ_u d_w[r, u] · d_x[u] · Σ_i q_w[r, u, i] · q_x[u, i],   out[out_off + r] = s[r]
// Rows and lanes as matvec.wgsl's lone token: ROWS rows per workgroup, LANES threads per row
// striding over its blocks four at a time, a tree in workgroup memory.
//
// Buffer layout (bindings 0-4 as weights.wgsl says):
//   binding 3  xq: x̂'s one row as quantize_q8.wgsl writes it, three vec4<u32> per block

@group(0) @binding(3) var<storage, read> xq: array<vec4<u32>>;

// The float units' x̂ (weights.wgsl), which this kernel never calls.
fn x4(xo: u32, k: u32) -> vec4<f32> {
    return vec4<f32>(0.0);
}

const LANES: u32 = 32u;
const ROWS: u32 = 8u;
const WG: u32 = LANES * ROWS;
var<workgroup> partial: array<f32, WG>;

fn block_dot(row: u32, u: u32) -> f32 {
    let m = xq[3u * u + 2u];
    return unit_q8(row, u, xq[3u * u], xq[3u * u + 1u], bitcast<f32>(m.x), bitcast<i32>(m.y));
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let g = wid.y * p.grid_x + wid.x;
    let lane = li % LANES;
    let row = g * ROWS + li / LANES;
    let units = select(0u, p.nb, row < p.rows);
    var acc = 0.0;
    var u = lane;
    for (; u + 3u * LANES < units; u += 4u * LANES) {
        acc += (block_dot(row, u) + block_dot(row, u + LANES))
             + (block_dot(row, u + 2u * LANES) + block_dot(row, u + 3u * LANES));
    }
    for (; u < units; u += LANES) {
        acc += block_dot(row, u);
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
