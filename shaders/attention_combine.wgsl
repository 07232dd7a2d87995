// Merges the splits of split decode attention (attention.wgsl), one workgroup per (head h,
// entry t of kv_rows; r = kv_rows[t], entries with one split are done already):
//   M = max_z m_z,  L = Σ_z l_z · e^(m_z − M),  out[r.row, h·head_dim + d] = Σ_{z < r.splits} acc_z[d] · e^(m_z − M) / L
// where split z left (acc_z[0..head_dim], m_z, l_z) at
// parts[((r.part · n_heads + h) · splits + z) · (head_dim + 2)].
//   grid: x = n_heads, y = n (entries)

struct Params {
    n_heads: u32,
    head_dim: u32,
    splits: u32,     // the dispatch's most splits: the stride of parts
    out_stride: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> parts: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<storage, read> kv_rows: array<KvRow>;

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wid.x;
    let r = kv_rows[wid.y];
    if (r.splits <= 1u) {
        return;
    }
    let hd = p.head_dim;
    let stride = hd + 2u;
    let base = (r.part * p.n_heads + h) * p.splits * stride;
    var big_m = -3.0e38;
    for (var z = 0u; z < r.splits; z++) {
        big_m = max(big_m, parts[base + z * stride + hd]);
    }
    var big_l = 0.0;
    for (var z = 0u; z < r.splits; z++) {
        let o = base + z * stride;
        big_l += parts[o + hd + 1u] * exp(parts[o + hd] - big_m);
    }
    for (var d = li; d < hd; d += WG) {
        var acc = 0.0;
        for (var z = 0u; z < r.splits; z++) {
            let o = base + z * stride;
            acc += parts[o + d] * exp(parts[o + hd] - big_m);
        }
        out[r.row * p.out_stride + h * hd + d] = acc / big_l;
    }
}
