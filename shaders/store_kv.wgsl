// Append to the KV caches: for each entry r of kv_rows (kv_rows.wgsl) and i < kv_dim,
//   k_cache[r.base + r.pos, i] = k[r.row, i],   v_cache[r.base + r.pos, i] = v[r.row, i]
// Caches are rows of kv_dim elements stored as kv_f32.wgsl or kv_f16.wgsl says (the
// prefix): KV_PER_WORD elements per word, so a thread writes one word of each cache (kv_dim
// is even, so a word never straddles two rows).
//   grid: one thread per word of the n entries' rows, folded 2-D

struct Params {
    n: u32,
    kv_dim: u32,
    grid_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> k_cache: array<KvWord>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<KvWord>;
@group(0) @binding(5) var<storage, read> kv_rows: array<KvRow>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let e = ((wid.y * p.grid_x + wid.x) * 256u + li) * KV_PER_WORD;
    if (e >= p.n * p.kv_dim) {
        return;
    }
    let r = kv_rows[e / p.kv_dim];
    let i = e % p.kv_dim;
    let src = r.row * p.kv_dim + i;
    let last = KV_PER_WORD - 1u; // the word's other element (f16), or src itself (f32)
    let dst = ((r.base + r.pos) * p.kv_dim + i) / KV_PER_WORD;
    k_cache[dst] = kv_word(k[src], k[src + last]);
    v_cache[dst] = kv_word(v[src], v[src + last]);
}
