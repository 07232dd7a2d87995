// Column gather before the product with a column-permuted matrix (GPTQ act order, whose
// repacked weights are W[:, perm]): out[t, i] = x[t * x_stride + perm[i]], for t < n, i < cols.
//   perm: u32 [cols]; x: [n, x_stride]; out: [n, cols] (dense rows)
//   grid: one thread per element of out, folded 2-D

struct Params {
    n: u32,
    cols: u32,
    x_stride: u32,
    grid_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> perm: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let e = (wid.y * p.grid_x + wid.x) * 256u + li;
    if (e >= p.n * p.cols) {
        return;
    }
    let t = e / p.cols;
    let i = e % p.cols;
    out[e] = x[t * p.x_stride + perm[i]];
}
