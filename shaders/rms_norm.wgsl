// RMSNorm: out[t, i] = x[first + t, i] / sqrt(mean_i(x[first + t]²) + eps) · w[i], t < n.
// One workgroup per row.
//   grid: x = n

struct Params {
    n: u32,
    cols: u32,
    first: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let xo = (p.first + wid.x) * p.cols;
    let oo = wid.x * p.cols;
    var ss = 0.0;
    for (var i = li; i < p.cols; i += WG) {
        ss += x[xo + i] * x[xo + i];
    }
    partial[li] = ss;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
    let inv = inverseSqrt(partial[0] / f32(p.cols) + p.eps);
    for (var i = li; i < p.cols; i += WG) {
        out[oo + i] = x[xo + i] * inv * w[i];
    }
}
