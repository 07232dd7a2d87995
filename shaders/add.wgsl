// Residual connection: x[i] += y[i], i < len.
//   grid: one thread per element, folded 2-D

struct Params {
    len: u32,
    grid_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = (wid.y * p.grid_x + wid.x) * 256u + li;
    if (i < p.len) {
        x[i] += y[i];
    }
}
