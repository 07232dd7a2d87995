// Matrix product for prefill: out[t, out_off + r] = Σ_k x[t, k] · W[r, k] for t < n, r < rows.
// Each workgroup computes a 64×64 tile (64 tokens × 64 weight rows) as 16×16 threads with a
// 4×4 register block each. K advances 16 at a time; both operands are staged in workgroup
// memory, weights decoded once per tile through load4 (see weights_<format>.wgsl).
//   grid: x = ceil(rows / 64), y = ceil(n / 64)

@group(0) @binding(3) var<storage, read> x: array<f32>;

// x[xo + k .. xo + k + 4], zero past the row's end (float formats pad rows to UNIT).
fn x4(xo: u32, k: u32) -> vec4<f32> {
    let i = xo + k;
    return vec4<f32>(
        select(0.0, x[i], k < p.cols),
        select(0.0, x[i + 1u], k + 1u < p.cols),
        select(0.0, x[i + 2u], k + 2u < p.cols),
        select(0.0, x[i + 3u], k + 3u < p.cols),
    );
}

const TILE: u32 = 64u;
const TK: u32 = 16u;
// [k][i] with i = token (xs) or weight row (wsh) within the tile, as vec4 over 4 of them.
var<workgroup> xs: array<vec4<f32>, 256>;
var<workgroup> wsh: array<vec4<f32>, 256>;

@compute @workgroup_size(16, 16)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let r0 = wid.x * TILE;
    let t0 = wid.y * TILE;
    // loader role: one tile row (token or weight row) and four consecutive k
    let lr = li / 4u;
    let lk = (li % 4u) * 4u;
    var acc: array<vec4<f32>, 4>; // acc[i][j]: token t0 + 4·lid.y + i, row r0 + 4·lid.x + j

    for (var k0 = 0u; k0 < p.cols; k0 += TK) {
        let k = k0 + lk;
        var xv = vec4<f32>(0.0);
        if (t0 + lr < p.n) {
            xv = x4((t0 + lr) * p.x_stride, k);
        }
        var wv = vec4<f32>(0.0);
        if (r0 + lr < p.rows && k < p.cols) {
            wv = load4(r0 + lr, k);
        }
        for (var c = 0u; c < 4u; c++) {
            xs[(lk + c) * 16u + lr / 4u][lr % 4u] = xv[c];
            wsh[(lk + c) * 16u + lr / 4u][lr % 4u] = wv[c];
        }
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let a = xs[kk * 16u + lid.y];
            let b = wsh[kk * 16u + lid.x];
            acc[0] += a.x * b;
            acc[1] += a.y * b;
            acc[2] += a.z * b;
            acc[3] += a.w * b;
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let t = t0 + 4u * lid.y + i;
        for (var j = 0u; j < 4u; j++) {
            let r = r0 + 4u * lid.x + j;
            if (t < p.n && r < p.rows) {
                out[t * p.out_stride + p.out_off + r] = acc[i][j];
            }
        }
    }
}
