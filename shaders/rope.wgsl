// Rotary position embedding, in place on x[t, h·head_dim ..] for t < n, h < n_heads:
//   (x_a, x_b) ← (x_a·cos − x_b·sin, x_a·sin + x_b·cos), with angles from table[t, j] =
//   (cos, sin) of pair j, computed on the host in f64. Pair j is (j, j + head_dim/2) for
//   Hugging Face weights, (2j, 2j + 1) for llama.cpp's permuted GGUF weights.
//   grid: one thread per (t, h, j), folded 2-D

struct Params {
    n: u32,
    n_heads: u32,
    head_dim: u32,
    stride: u32,      // elements between rows of x
    interleaved: u32, // 1: pairs (2j, 2j + 1)
    grid_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = (wid.y * p.grid_x + wid.x) * 256u + li;
    let half = p.head_dim / 2u;
    if (i >= p.n * p.n_heads * half) {
        return;
    }
    let j = i % half;
    let h = (i / half) % p.n_heads;
    let t = i / (half * p.n_heads);
    let c = table[t * p.head_dim + 2u * j];
    let s = table[t * p.head_dim + 2u * j + 1u];
    let base = t * p.stride + h * p.head_dim;
    var a = base + j;
    var b = base + j + half;
    if (p.interleaved == 1u) {
        a = base + 2u * j;
        b = a + 1u;
    }
    let x0 = x[a];
    let x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x0 * s + x1 * c;
}
