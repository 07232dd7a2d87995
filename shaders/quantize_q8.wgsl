// One row of x quantized to int8 in blocks of 32, as ggml's quantize_row_q8_0 and the CPU
// backend's activations are (cpu/q8/blocks.rs), for matvec_q8.wgsl:
//   d = max|x| / 127,   q[i] = round(x[i] · 127 / max|x|) (half away from zero, as Rust's
//   f32::round),   Σq
// One thread per block.
//
// Buffer layout:
//   binding 0  p:  Params (uniform)
//   binding 1  x:  f32 [.., x_stride]; row x_row is read, its first cols (a multiple of 32)
//   binding 2  xq: per block b, three vec4<u32>: xq[3b], xq[3b + 1] the 32 int8, element
//                  4j + i in byte i of word j (pack4xI8); xq[3b + 2] = (d bits, Σq bits, 0, 0)

struct Params {
    cols: u32,
    x_row: u32,
    x_stride: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> xq: array<vec4<u32>>;

// round() in WGSL breaks ties to even; the CPU's (and ggml's roundf) away from zero
fn round_away(t: f32) -> i32 {
    let whole = trunc(t);
    return i32(select(round(t), whole + sign(t), abs(t - whole) == 0.5));
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = gid.x;
    if (b >= p.cols / 32u) {
        return;
    }
    let o = p.x_row * p.x_stride + b * 32u;
    var amax = 0.0;
    for (var i = 0u; i < 32u; i++) {
        amax = max(amax, abs(x[o + i]));
    }
    let id = select(0.0, 127.0 / amax, amax > 0.0);
    var words: array<u32, 8>;
    var qsum = 0;
    for (var j = 0u; j < 8u; j++) {
        let k = o + 4u * j;
        let q = vec4<i32>(
            round_away(x[k] * id), round_away(x[k + 1u] * id),
            round_away(x[k + 2u] * id), round_away(x[k + 3u] * id),
        );
        qsum += q.x + q.y + q.z + q.w;
        words[j] = pack4xI8(q);
    }
    xq[3u * b] = vec4<u32>(words[0], words[1], words[2], words[3]);
    xq[3u * b + 1u] = vec4<u32>(words[4], words[5], words[6], words[7]);
    xq[3u * b + 2u] = vec4<u32>(bitcast<u32>(amax / 127.0), bitcast<u32>(qsum), 0u, 0u);
}
