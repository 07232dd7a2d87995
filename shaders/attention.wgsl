// Causal attention with GQA over the KV cache, one workgroup per (head h, query t, split z):
//   out[first + t, h] = Σ_{s ≤ pos + t} softmax_s(q[first + t, h] · k_cache[s, g] / √head_dim) · v_cache[s, g]
// (rows first..first + n are one sequence's of a batch)
// where g = h / (n_heads / n_kv_heads) is the shared kv head. Keys are visited in tiles of
// 64 positions with an online softmax (running max m and sum l), so any context length
// works in fixed workgroup memory. Each thread owns head dims li, li+64, li+128, li+192.
//   grid: x = n_heads, y = n, z = splits
// With one split the workgroup writes out[t, h] itself. With several (decode over a long
// context), split z takes keys z·chunk .. (z+1)·chunk and writes its unnormalized sum, m
// and l to parts[(t·n_heads + h)·splits + z] as head_dim + 2 floats; attention_combine.wgsl
// merges them. The caches are stored as the prefix (kv_f32.wgsl or kv_f16.wgsl) says and
// read through its k_at / v_at, in f32.

struct Params {
    n: u32,
    pos: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    q_stride: u32,
    kv_stride: u32,
    out_stride: u32,
    scale: f32,
    chunk: u32,  // keys per split
    splits: u32,
    first: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<KvWord>;
@group(0) @binding(3) var<storage, read> v_cache: array<KvWord>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> parts: array<f32>;

const WG: u32 = 64u;
var<workgroup> qs: array<f32, 256>;
var<workgroup> probs: array<f32, WG>;
var<workgroup> red: array<f32, WG>;

fn reduce_max(li: u32) -> f32 {
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            red[li] = max(red[li], red[li + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(li: u32) -> f32 {
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            red[li] += red[li + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let h = wid.x;
    let t = wid.y;
    let hd = p.head_dim;
    let kv_off = (h / (p.n_heads / p.n_kv_heads)) * hd;
    let len = p.pos + t + 1u;
    let first = wid.z * p.chunk;
    let end = min(len, first + p.chunk);
    for (var d = li; d < hd; d += WG) {
        qs[d] = q[(p.first + t) * p.q_stride + h * hd + d] * p.scale;
    }
    workgroupBarrier();

    var m = -3.0e38;
    var l = 0.0;
    var acc = vec4<f32>(0.0);
    for (var base = first; base < end; base += WG) {
        // scores of this tile: thread li takes key base + li
        let s_idx = base + li;
        var score = -3.0e38;
        if (s_idx < end) {
            let ko = s_idx * p.kv_stride + kv_off;
            var dotp = 0.0;
            for (var d = 0u; d < hd; d++) {
                dotp += qs[d] * k_at(ko + d);
            }
            score = dotp;
        }
        red[li] = score;
        workgroupBarrier();
        let m_new = max(m, reduce_max(li));
        let e = select(0.0, exp(score - m_new), s_idx < end);
        probs[li] = e;
        red[li] = e;
        workgroupBarrier();
        let corr = exp(m - m_new);
        l = l * corr + reduce_sum(li);
        m = m_new;
        // values of this tile, weighted: thread li owns dims li + 64c
        let count = min(WG, end - base);
        acc *= corr;
        for (var j = 0u; j < count; j++) {
            let vo = (base + j) * p.kv_stride + kv_off;
            let pj = probs[j];
            for (var c = 0u; c < 4u; c++) {
                let d = li + c * WG;
                if (d < hd) {
                    acc[c] += pj * v_at(vo + d);
                }
            }
        }
        workgroupBarrier();
    }
    if (p.splits > 1u) {
        // a split past this query's keys (none in decode) leaves m = -3e38, l = 0, acc = 0
        let po = ((t * p.n_heads + h) * p.splits + wid.z) * (hd + 2u);
        for (var c = 0u; c < 4u; c++) {
            let d = li + c * WG;
            if (d < hd) {
                parts[po + d] = acc[c];
            }
        }
        if (li == 0u) {
            parts[po + hd] = m;
            parts[po + hd + 1u] = l;
        }
        return;
    }
    for (var c = 0u; c < 4u; c++) {
        let d = li + c * WG;
        if (d < hd) {
            out[(p.first + t) * p.out_stride + h * hd + d] = acc[c] / l;
        }
    }
}
