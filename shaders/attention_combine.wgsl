// Merges the splits of split decode attention (attention.wgsl) for one query, one
// workgroup per head h:
//   M = max_z m_z,  L = Σ_z l_z · e^(m_z − M),  out[out_base + h·head_dim + d] = Σ_z acc_z[d] · e^(m_z − M) / L
// where split z left (acc_z[0..head_dim], m_z, l_z) at parts[(h · splits + z) · (head_dim + 2)].
//   grid: x = n_heads

struct Params {
    n_heads: u32,
    head_dim: u32,
    splits: u32,
    out_base: u32,  // where the query's output row starts
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> parts: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

const WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wid.x;
    let hd = p.head_dim;
    let stride = hd + 2u;
    let base = h * p.splits * stride;
    var big_m = -3.0e38;
    for (var z = 0u; z < p.splits; z++) {
        big_m = max(big_m, parts[base + z * stride + hd]);
    }
    var big_l = 0.0;
    for (var z = 0u; z < p.splits; z++) {
        let o = base + z * stride;
        big_l += parts[o + hd + 1u] * exp(parts[o + hd] - big_m);
    }
    for (var d = li; d < hd; d += WG) {
        var acc = 0.0;
        for (var z = 0u; z < p.splits; z++) {
            let o = base + z * stride;
            acc += parts[o + d] * exp(parts[o + hd] - big_m);
        }
        out[p.out_base + h * hd + d] = acc / big_l;
    }
}
