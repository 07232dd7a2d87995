// Causal attention with GQA over the KV cache, one workgroup per (head h, entry t, split z)
// of kv_rows (kv_rows.wgsl; entry r = kv_rows[t]):
//   out[r.row, h] = Σ_{s ≤ r.pos} softmax_s(q[r.row, h] · k_cache[r.base + s, g] / √head_dim) · v_cache[r.base + s, g]
// where g = h / (n_heads / n_kv_heads) is the shared kv head. The entries may be rows of
// several sequences whose caches share the buffers, so a batch's decode step is one
// dispatch. Keys are visited in tiles of 64 positions with an online softmax (running max m
// and sum l), so any context length works in fixed workgroup memory. Each thread owns head
// dims li, li+64, li+128, li+192.
//   grid: x = n_heads, y = n (entries), z = the most splits of any entry
// With one split the workgroup writes out[r.row, h] itself. With several (decode over a long
// context), split z takes keys z·r.chunk .. (z+1)·r.chunk and writes its unnormalized sum,
// m and l to parts[((r.part·n_heads + h)·splits + z)·(head_dim + 2)]; attention_combine.wgsl
// merges them. Workgroups past an entry's own splits do nothing. The caches are stored as
// the prefix (kv_f32.wgsl or kv_f16.wgsl) says and read through its k_at / v_at, in f32.

struct Params {
    n: u32,
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    q_stride: u32,
    kv_stride: u32,
    out_stride: u32,
    scale: f32,
    splits: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k_cache: array<KvWord>;
@group(0) @binding(3) var<storage, read> v_cache: array<KvWord>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<storage, read_write> parts: array<f32>;
@group(0) @binding(6) var<storage, read> kv_rows: array<KvRow>;

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
    let r = kv_rows[wid.y];
    if (wid.z >= r.splits) {
        return; // the whole workgroup: another entry has more splits
    }
    let hd = p.head_dim;
    let kv_off = r.base * p.kv_stride + (h / (p.n_heads / p.n_kv_heads)) * hd;
    let len = r.pos + 1u;
    let first = wid.z * r.chunk;
    let end = min(len, first + r.chunk);
    for (var d = li; d < hd; d += WG) {
        qs[d] = q[r.row * p.q_stride + h * hd + d] * p.scale;
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
    if (r.splits > 1u) {
        // a split past this query's keys (none in decode) leaves m = -3e38, l = 0, acc = 0
        let po = ((r.part * p.n_heads + h) * p.splits + wid.z) * (hd + 2u);
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
            out[r.row * p.out_stride + h * hd + d] = acc[c] / l;
        }
    }
}
