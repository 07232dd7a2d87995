// Matrix-vector product for decode, with the ops around it that the forward pass runs on
// one token fused in (wgpu/fuse.rs decides which):
//   s[r] = Σ_k W[r, k] · x̂[k],   out[out_off + r] = s[r]
// ROWS weight rows per workgroup, LANES threads per row; a row's threads stride over its dot
// units (UNIT weights each, see weights_<format>.wgsl) and reduce in workgroup memory.
// Workgroups beyond 65535 fold into a 2-D grid: group g = wid.y * grid_x + wid.x.
//
// Pipeline constants say what is fused. Each computes what the op it replaces computes, in
// the same order, so a fused decode step has the bits of the unfused one:
//   NORM  x̂ = x[x_row] / sqrt(mean(x[x_row]²) + eps) · norm_w (rms_norm.wgsl's sum and
//         order); the workgroups also write x̂ to xn, the norm's own output. Else x̂ = x[x_row].
//   ROPE  1: pairs (j, j + head_dim/2), 2: pairs (2j, 2j + 1); s rotated by the angle of
//         pair j, as rope.wgsl does. Rows are laid out so a workgroup holds both of a pair.
//   KV    1: an f32, 2: an f16 cache; s also goes to aux as row `pos` of a cache of `rows`
//         columns (store_kv.wgsl; f16 packs two neighbours per word with pack2x16float).
//   ADD   aux[r] += s: the residual add after the output and down projections.
//   SILU  aux[r] = silu(aux[r]) · s: SwiGLU, with aux the gate product and this one up.
//   MULTI the p.n tokens x_row.. of a batch instead (nothing fused), TOKENS of them per
//         workgroup (group wid.z takes x_row + TOKENS · wid.z ..): token t's row of x at
//         t · x_stride, out[t · out_stride + out_off + r]. Each unit of weights is loaded
//         and decoded once for the group and each token summed as a lone token is, so a
//         sequence gets the same bits in a batch of any size as alone.
//
// Buffer layout (bindings 0-4 as weights.wgsl says):
//   binding 3  x:      f32 as vec4s, row x_row of stride x_stride read
//   binding 5  norm_w: [cols] f32 as vec4s (NORM)
//   binding 6  xn:     [cols] f32 (NORM)
//   binding 7  table:  [head_dim / 2, (cos, sin)] f32 (ROPE)
//   binding 8  aux:    words, u32 bits: the cache (KV), the residual (ADD), the gate (SILU)
// Unused bindings are bound to small dummy buffers.

override NORM: bool = false;
override ROPE: u32 = 0u;
override KV: u32 = 0u;
override ADD: bool = false;
override SILU: bool = false;
override MULTI: bool = false;
// Tokens per workgroup under MULTI: its partial sums are TOKENS per thread.
const TOKENS: u32 = 8u;

@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> norm_w: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> xn: array<f32>;
@group(0) @binding(7) var<storage, read> table: array<f32>;
@group(0) @binding(8) var<storage, read_write> aux: array<u32>;

// 1 / rms of x's row when NORM, found by each workgroup before its products.
var<private> inv_rms: f32 = 1.0;

// x̂[k .. k + 4] of the row starting at xo. A row starts on a vec4, and every unit is a
// multiple of 4 weights. Past the row's end x is finite (another row, or zero) and meets
// only zero padding of float rows.
fn x4(xo: u32, k: u32) -> vec4<f32> {
    let v = x[(xo + k) / 4u];
    if (NORM) {
        return v * inv_rms * norm_w[k / 4u];
    }
    return v;
}

fn x1(i: u32) -> f32 {
    return x[i / 4u][i % 4u];
}

// ROWS rows per workgroup, LANES threads per row. A row of a 7B matrix is only 2-8 KiB, too
// little to keep a workgroup of its own busy: with one row per workgroup the scheduling and
// the reduction cost more than the loads (6 % of the copy bandwidth on an H100 for Q4_0).
const LANES: u32 = 32u;
const ROWS: u32 = 8u;
const WG: u32 = LANES * ROWS;
var<workgroup> partial: array<f32, WG>;
// MULTI: token t's partial sums at [t * WG ..].
var<workgroup> partials: array<f32, WG * TOKENS>;
// Each row's final value, for the f16 cache's word that packs it with its neighbour.
var<workgroup> done: array<f32, ROWS>;

// The weight row that row m of group g computes: in order, or with ROPE == 1 four pairs
// (j, j + head_dim/2) of one head (head_dim a multiple of ROWS), so both halves of a
// rotation meet in one workgroup, as rows m and m ^ 1.
fn row_of(g: u32, m: u32) -> u32 {
    if (ROPE == 1u) {
        let per_head = p.head_dim / ROWS;
        let j = (g % per_head) * (ROWS / 2u) + m / 2u;
        return (g / per_head) * p.head_dim + j + (m % 2u) * (p.head_dim / 2u);
    }
    return g * ROWS + m;
}

// rms_norm.wgsl's sum of squares, in its order (the same WG threads, the same tree), then
// this group's share of writing x̂ to xn.
fn norm_prologue(g: u32, li: u32, xo: u32) {
    var ss = 0.0;
    for (var i = li; i < p.cols; i += WG) {
        ss += x1(xo + i) * x1(xo + i);
    }
    partial[li] = ss;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (li < s) {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
    inv_rms = inverseSqrt(partial[0] / f32(p.cols) + p.eps);
    workgroupBarrier(); // every thread has read partial[0] before the products reuse it
    let groups = (p.rows + ROWS - 1u) / ROWS;
    for (var i = g * WG + li; i < p.cols; i += groups * WG) {
        xn[i] = x1(xo + i) * inv_rms * norm_w[i / 4u][i % 4u];
    }
}

// unit_x behind a select the compiler cannot fold (no product has zero rows), so that no
// sum over units fuses a unit's last multiply (its scale) into a multiply-add: which
// product a compiler fuses depends on how the sum is written (SPIR-V and WGSL allow the
// fusion, which rounds once instead of twice), and row_sum and row_sums write theirs
// differently. Measured on lavapipe: without it a token in a MULTI group of Q4_0 rows sums
// 2e-6 away from the same token alone.
fn unit_sum(un: Unit, u: u32, xo: u32) -> f32 {
    return select(unit_x(un, u, xo), 0.0, p.rows == 0u);
}

fn unit_dot(row: u32, u: u32, xo: u32) -> f32 {
    return unit_sum(unit_at(row, u), u, xo);
}

// The sum of row `row`'s products with x̂ from xo, as every thread of the row's group sees it.
fn row_sum(row: u32, lane: u32, li: u32, xo: u32) -> f32 {
    // no early return: every thread must reach the barriers; a row past the end adds nothing
    let units = select(0u, p.nb, row < p.rows);
    // four independent units per step, so each thread has several loads in flight
    var acc = 0.0;
    var u = lane;
    for (; u + 3u * LANES < units; u += 4u * LANES) {
        acc += (unit_dot(row, u, xo) + unit_dot(row, u + LANES, xo))
             + (unit_dot(row, u + 2u * LANES, xo) + unit_dot(row, u + 3u * LANES, xo));
    }
    for (; u < units; u += LANES) {
        acc += unit_dot(row, u, xo);
    }
    partial[li] = acc;
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            partial[li] += partial[li + s];
        }
        workgroupBarrier();
    }
    return partial[li - lane];
}

// row_sum for the nt ≤ TOKENS tokens t0.. at once, each in row_sum's order (a + b where
// row_sum adds two units, the same tree): a unit is loaded and decoded once for all of them.
// Token t's sum ends in partials[t * WG + li - lane].
fn row_sums(row: u32, lane: u32, li: u32, t0: u32, nt: u32) {
    let units = select(0u, p.nb, row < p.rows);
    var acc: array<f32, TOKENS>;
    var ab: array<f32, TOKENS>;
    var cd: array<f32, TOKENS>;
    var u = lane;
    for (; u + 3u * LANES < units; u += 4u * LANES) {
        var un = unit_at(row, u);
        for (var t = 0u; t < TOKENS; t++) {
            if (t < nt) {
                ab[t] = unit_sum(un, u, (t0 + t) * p.x_stride);
            }
        }
        un = unit_at(row, u + LANES);
        for (var t = 0u; t < TOKENS; t++) {
            if (t < nt) {
                ab[t] += unit_sum(un, u + LANES, (t0 + t) * p.x_stride);
            }
        }
        un = unit_at(row, u + 2u * LANES);
        for (var t = 0u; t < TOKENS; t++) {
            if (t < nt) {
                cd[t] = unit_sum(un, u + 2u * LANES, (t0 + t) * p.x_stride);
            }
        }
        un = unit_at(row, u + 3u * LANES);
        for (var t = 0u; t < TOKENS; t++) {
            if (t < nt) {
                cd[t] += unit_sum(un, u + 3u * LANES, (t0 + t) * p.x_stride);
                acc[t] += ab[t] + cd[t];
            }
        }
    }
    for (; u < units; u += LANES) {
        let un = unit_at(row, u);
        for (var t = 0u; t < TOKENS; t++) {
            if (t < nt) {
                acc[t] += unit_sum(un, u, (t0 + t) * p.x_stride);
            }
        }
    }
    for (var t = 0u; t < nt; t++) {
        partials[t * WG + li] = acc[t];
    }
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            for (var t = 0u; t < nt; t++) {
                partials[t * WG + li] += partials[t * WG + li + s];
            }
        }
        workgroupBarrier();
    }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let g = wid.y * p.grid_x + wid.x;
    let m = li / LANES;
    let row = row_of(g, m);
    let lane = li % LANES;
    if (MULTI) {
        let t0 = p.x_row + wid.z * TOKENS;
        let nt = min(TOKENS, p.x_row + p.n - t0);
        row_sums(row, lane, li, t0, nt);
        // lane t writes token t's sum
        if (lane < nt && row < p.rows) {
            out[(t0 + lane) * p.out_stride + p.out_off + row] = partials[lane * WG + li - lane];
        }
        return;
    }
    let xo = p.x_row * p.x_stride;
    if (NORM) {
        norm_prologue(g, li, xo);
    }
    var s = row_sum(row, lane, li, xo);
    if (ROPE != 0u) {
        // rope.wgsl: (a, b) <- (a·cos − b·sin, a·sin + b·cos)
        let other = partial[(m ^ 1u) * LANES];
        let e = row % p.head_dim;
        var j = e / 2u;
        var second = (e & 1u) == 1u;
        if (ROPE == 1u) {
            j = e % (p.head_dim / 2u);
            second = e >= p.head_dim / 2u;
        }
        let c = table[2u * j];
        let sn = table[2u * j + 1u];
        if (second) {
            s = other * sn + s * c;
        } else {
            s = s * c - other * sn;
        }
    }
    if (KV == 2u) {
        if (lane == 0u) {
            done[m] = s;
        }
        workgroupBarrier();
    }
    if (lane != 0u || row >= p.rows) {
        return;
    }
    let i = p.out_off + row;
    out[i] = s;
    if (KV == 1u) {
        aux[p.pos * p.rows + row] = bitcast<u32>(s);
    }
    if (KV == 2u && (row & 1u) == 0u) {
        // the next element of the row is the next row: m ^ 1 in order, m ^ 2 in pairs
        let next = select(m ^ 1u, m ^ 2u, ROPE == 1u);
        aux[(p.pos * p.rows + row) / 2u] = pack2x16float(vec2<f32>(s, done[next]));
    }
    if (ADD) {
        aux[i] = bitcast<u32>(bitcast<f32>(aux[i]) + s);
    }
    if (SILU) {
        let gate = bitcast<f32>(aux[i]);
        aux[i] = bitcast<u32>(gate / (1.0 + exp(-gate)) * s);
    }
}
