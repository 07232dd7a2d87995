// Append to the KV cache: k_cache[pos + t, i] = k[first + t, i] and v_cache[pos + t, i] =
// v[first + t, i] for t < n, i < kv_dim (rows first.. are one sequence's of a batch).
// Caches are [max_seq, kv_dim] elements stored as kv_f32.wgsl or kv_f16.wgsl says (the
// prefix): KV_PER_WORD elements per word, so a thread writes one word of each cache.
//   grid: one thread per word, folded 2-D

struct Params {
    n: u32,
    pos: u32,
    kv_dim: u32,
    grid_x: u32,
    first: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> k_cache: array<KvWord>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<KvWord>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let e = ((wid.y * p.grid_x + wid.x) * 256u + li) * KV_PER_WORD;
    if (e >= p.n * p.kv_dim) {
        return;
    }
    let src = p.first * p.kv_dim + e;
    let last = KV_PER_WORD - 1u; // the word's other element (f16), or e itself (f32)
    let dst = (p.pos * p.kv_dim + e) / KV_PER_WORD;
    k_cache[dst] = kv_word(k[src], k[src + last]);
    v_cache[dst] = kv_word(v[src], v[src + last]);
}
