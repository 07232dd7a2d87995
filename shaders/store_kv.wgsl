// Append to the KV cache: k_cache[pos + t, i] = k[first + t, i] and v_cache[pos + t, i] =
// v[first + t, i] for t < n, i < kv_dim (rows first.. are one sequence's of a batch).
// Caches are [max_seq, kv_dim] f32.
//   grid: one thread per element, folded 2-D

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
@group(0) @binding(3) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = (wid.y * p.grid_x + wid.x) * 256u + li;
    if (i >= p.n * p.kv_dim) {
        return;
    }
    k_cache[p.pos * p.kv_dim + i] = k[p.first * p.kv_dim + i];
    v_cache[p.pos * p.kv_dim + i] = v[p.first * p.kv_dim + i];
}
