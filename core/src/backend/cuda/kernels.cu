// The cuda backend's kernels: one per op, and one per weight format for the ops that read
// a weight matrix. They are the CUDA counterparts of shaders/*.wgsl and compute the same
// functions (the CPU backend, core/src/backend/cpu.rs, is the reference). Compiled once
// per process by NVRTC for the device's compute capability; no headers are included.
//
// Conventions
// - Activations are f32, row-major [rows, stride]; kernels work on the first n rows.
// - One-token products of quantized weights (decode) read their input vector quantized to
//   8 bits ("Q8 activations", as llama.cpp's MMVQ and the CPU backend's Q8_0/Q8_K do):
//   per block b of 32 values, q_i = round(x_i · 127 / max|x_b|) (int8, ties to even) and
//   d_b = max|x_b| / 127, stored as cols int8 at q, then one float2 (d_b, s_b = d_b · Σ q_i)
//   per block at q + cols. The product then computes Σ w_i · d_b · q_i exactly (up to f32
//   rounding), with dp4a (four int8 products per instruction) on the weights' integer
//   quants. quantize_q8 writes them, or the kernel that produces x (rms_norm,
//   add_rms_norm, attention, glu) when given a q8 pointer.
// - Positions come from device memory (`const u32* pos`, a slot of the batch's upload
//   arena), never from a kernel argument, so a decode step launches the same kernels with
//   the same arguments every time and can be replayed as a CUDA graph.
// - A weight matrix is row-major in the GPU layout of backend/layout.rs (`Layout`): row r's
//   payload at w + r * wrow bytes (16-byte aligned; `payload_row` there) and its per-block
//   scales at s + r * srow bytes (`scales_row`).
//
// Weight formats (ggml's block layouts, repacked at upload like shaders/weights_*.wgsl):
//   f32, f16, bf16  payload: the row, zero-padded to a multiple of 16 bytes; no scales
//   q8_0   payload: 32 int8 per block of 32                  scales: f16 d     w = d·q
//   q4_0   payload: 16 bytes per block of 32; byte j holds weight j in its low nibble and
//          weight j + 16 in its high nibble                 scales: f16 d     w = d·(q − 8)
//   q4_1   as q4_0                                          scales: f16 (d, m) w = d·q + m
//   gptq4  as q4_0, in the matrix's stored column order     scales: f16 (d, z) w = d·(q − z)
//   q4_k   super-blocks of 256 as stored, 144 bytes: f16 d, f16 dmin, 12 bytes of six-bit
//          scales and mins (ggml's get_scale_min_k4), 128 bytes of nibbles: sub-block 2i
//          takes the low nibbles of bytes 16+32i..16+32i+31, sub-block 2i+1 their high
//          nibbles; no scales                                 w = d·sc_j·q − dmin·m_j
//   q6_k   super-blocks of 256 without d, 208 bytes: ql[128], qh[64], int8 scales[16];
//          within half h of 128 weights, group g of 32 (weights 128h + 32g + l) reads ql
//          byte 64h + 32(g & 1) + l (low nibble for g < 2, high for g >= 2), bits 2g..2g+1
//          of qh byte 32h + l, and scale 8h + 2g + l/16      scales: f16 d     w = d·sc·(q − 32)

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;
typedef unsigned long long u64;

#define NEG_INF __int_as_float(0xff800000u)

// ---------------------------------------------------------------------------------------
// Small helpers

// BEGIN PTX: the only inline PTX and integer intrinsics (a host emulation for tests swaps
// this region)
// f16 bits to f32
__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// f32 to f16 bits, rounded to nearest even
__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// A KV cache element: f32, or f16 bits (u16) for a cache of half the size; read and written
// as f32 (the f16 cache rounds on store).
__device__ __forceinline__ float kv_ld(const float* p, u64 i) { return p[i]; }
__device__ __forceinline__ float kv_ld(const u16* p, u64 i) { return h2f(p[i]); }
__device__ __forceinline__ void kv_st(float* p, u64 i, float x) { p[i] = x; }
__device__ __forceinline__ void kv_st(u16* p, u64 i, float x) { p[i] = f2h(x); }

// Two floats as an f16 pair, `lo` in the low half.
__device__ __forceinline__ u32 pack_h2(float lo, float hi) {
    u32 r;
    asm("{.reg .f16 l, h;\n\tcvt.rn.f16.f32 l, %1;\n\tcvt.rn.f16.f32 h, %2;\n\tmov.b32 %0, {l, h};}"
        : "=r"(r)
        : "f"(lo), "f"(hi));
    return r;
}

// c += a · b for one warp: a 16×16 f16 tile (row-major fragments a[4]), b 16×8 f16
// (column-major fragments b[2]), c 16×8 f32 (fragments c[4]), as PTX's m16n8k16 layout:
// lane = 4g + q holds a rows g and g+8, columns 2q, 2q+1 (+8); b column g, rows 2q, 2q+1
// (+8); c rows g and g+8, columns 2q, 2q+1. sm_80+.
__device__ __forceinline__ void mma_16816(float* c, const u32* a, const u32* b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// c + Σ_i a_i · b_i over the four signed bytes of a and b (dp4a, sm_61+).
__device__ __forceinline__ int dp4a(u32 a, u32 b, int c) { return __dp4a((int)a, (int)b, c); }

// v rounded to the nearest integer, ties to even.
__device__ __forceinline__ int f2i_rn(float v) { return __float2int_rn(v); }
// END PTX

__device__ __forceinline__ float lo_h(u32 v) { return h2f((u16)(v & 0xffffu)); }
__device__ __forceinline__ float hi_h(u32 v) { return h2f((u16)(v >> 16)); }
__device__ __forceinline__ float lo_bf(u32 v) { return __int_as_float(v << 16); }
__device__ __forceinline__ float hi_bf(u32 v) { return __int_as_float(v & 0xffff0000u); }

// Byte i (0..15) of a 16-byte vector, as an integer; i is a compile-time constant after
// unrolling, or a small run-time value resolved with selects (no local memory).
__device__ __forceinline__ u32 byte16(uint4 v, int i) {
    u32 w = i < 4 ? v.x : i < 8 ? v.y : i < 12 ? v.z : v.w;
    return (w >> (8 * (i & 3))) & 255u;
}
__device__ __forceinline__ u32 word4(uint4 v, int c) { return c == 0 ? v.x : c == 1 ? v.y : c == 2 ? v.z : v.w; }

__device__ __forceinline__ uint4 ld16(const u8* p) { return __ldg((const uint4*)p); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Q8 activations (see the conventions at the top) of the warp's 32 values v, lane i of block
// b holding x[32b + i]; i = 32b + lane. Every lane of the warp takes part.
__device__ __forceinline__ void q8_block(float v, u8* q, int i, int cols) {
    float amax = warp_max(fabsf(v));
    int qi = amax > 0.0f ? f2i_rn(v * (127.0f / amax)) : 0;
    q[i] = (u8)qi;
    float s = warp_sum((float)qi);
    if ((i & 31) == 0) {
        float d = amax / 127.0f;
        ((float2*)(q + cols))[i >> 5] = make_float2(d, d * s);
    }
}

// x[k..k+4], zero past `cols` (float formats pad their rows; the padding's x is not read).
__device__ __forceinline__ float4 x4(const float* x, int k, int cols) {
    if (k + 4 <= cols) return __ldg((const float4*)(x + k));
    float4 r;
    r.x = k < cols ? x[k] : 0.0f;
    r.y = k + 1 < cols ? x[k + 1] : 0.0f;
    r.z = k + 2 < cols ? x[k + 2] : 0.0f;
    r.w = k + 3 < cols ? x[k + 3] : 0.0f;
    return r;
}

__device__ __forceinline__ float dot4(float4 a, float b0, float b1, float b2, float b3) {
    return a.x * b0 + a.y * b1 + a.z * b2 + a.w * b3;
}

// q4_k: (d·scale_j, dmin·min_j) of sub-block j from the 16-byte header, as ggml's
// get_scale_min_k4 (the scales are header bytes 4..15).
__device__ __forceinline__ float2 q4k_dm(uint4 h, int j) {
    u32 sc, mn;
    if (j < 4) {
        sc = byte16(h, 4 + j) & 63u;
        mn = byte16(h, 8 + j) & 63u;
    } else {
        sc = (byte16(h, 8 + j) & 15u) | ((byte16(h, j) >> 6) << 4);
        mn = (byte16(h, 8 + j) >> 4) | ((byte16(h, 4 + j) >> 6) << 4);
    }
    return make_float2(lo_h(h.x) * (float)sc, hi_h(h.x) * (float)mn);
}

__device__ __forceinline__ float i8f(u32 b) { return (float)(int)(signed char)(u8)b; }

// ---------------------------------------------------------------------------------------
// Weight formats. Each defines, over row pointers wr (payload) and sr (scales):
//   load16   w[k0..k0+16] as floats (k0 a multiple of 16), zero past `cols` (prefill, embed)
//   Q8       whether one-token products read Q8 activations (see the conventions above)
// and for those products, the float formats (f32 activations):
//   UNIT     columns per dot unit (one lane's step in a matrix-vector product)
//   Raw      the bytes of one unit, loaded with 16-byte loads
//   load     Raw of unit u
//   dot      Σ_k w[k] · x[k] over the unit's columns
// the quantized formats (Q8 activations):
//   QK       columns per unit (a multiple of 32: QK / 32 activation blocks)
//   U        units one lane loads at once (for each of its rows)
//   Raw, load  as above
//   dotq     Σ_k w[k] · d_b·q_k over unit u, from the unit's int8 activations (QK / 16
//            16-byte vectors x) and its blocks' (d_b, s_b) pairs ds

struct F32 {
    static const bool Q8 = false;
    static const int UNIT = 4;
    typedef float4 Raw;
    static __device__ __forceinline__ Raw load(const u8* wr, const u8* sr, int u) { return __ldg((const float4*)wr + u); }
    static __device__ __forceinline__ float dot(const Raw& w, const float* x, int u, int cols) {
        float4 a = x4(x, 4 * u, cols);
        return a.x * w.x + a.y * w.y + a.z * w.z + a.w * w.w;
    }
    static __device__ __forceinline__ void load16(const u8* wr, const u8* sr, int k0, int cols, float* v) {
        const float* p = (const float*)wr;
        if (k0 + 16 <= cols) {
#pragma unroll
            for (int c = 0; c < 4; c++) {
                float4 f = __ldg((const float4*)(p + k0) + c);
                v[4 * c] = f.x; v[4 * c + 1] = f.y; v[4 * c + 2] = f.z; v[4 * c + 3] = f.w;
            }
        } else {
#pragma unroll
            for (int i = 0; i < 16; i++) v[i] = k0 + i < cols ? p[k0 + i] : 0.0f;
        }
    }
};

struct F16 {
    static const bool Q8 = false;
    static const int UNIT = 8;
    typedef uint4 Raw;
    static __device__ __forceinline__ Raw load(const u8* wr, const u8* sr, int u) { return ld16(wr + 16 * u); }
    static __device__ __forceinline__ float dot(const Raw& w, const float* x, int u, int cols) {
        float4 a = x4(x, 8 * u, cols), b = x4(x, 8 * u + 4, cols);
        return dot4(a, lo_h(w.x), hi_h(w.x), lo_h(w.y), hi_h(w.y)) + dot4(b, lo_h(w.z), hi_h(w.z), lo_h(w.w), hi_h(w.w));
    }
    static __device__ __forceinline__ void load16(const u8* wr, const u8* sr, int k0, int cols, float* v) {
        if (k0 + 16 <= cols) {
            uint4 a = ld16(wr + 2 * k0), b = ld16(wr + 2 * k0 + 16);
#pragma unroll
            for (int c = 0; c < 4; c++) {
                v[2 * c] = lo_h(word4(a, c)); v[2 * c + 1] = hi_h(word4(a, c));
                v[8 + 2 * c] = lo_h(word4(b, c)); v[8 + 2 * c + 1] = hi_h(word4(b, c));
            }
        } else {
            const u16* p = (const u16*)wr;
#pragma unroll
            for (int i = 0; i < 16; i++) v[i] = k0 + i < cols ? h2f(p[k0 + i]) : 0.0f;
        }
    }
};

struct BF16 {
    static const bool Q8 = false;
    static const int UNIT = 8;
    typedef uint4 Raw;
    static __device__ __forceinline__ Raw load(const u8* wr, const u8* sr, int u) { return ld16(wr + 16 * u); }
    static __device__ __forceinline__ float dot(const Raw& w, const float* x, int u, int cols) {
        float4 a = x4(x, 8 * u, cols), b = x4(x, 8 * u + 4, cols);
        return dot4(a, lo_bf(w.x), hi_bf(w.x), lo_bf(w.y), hi_bf(w.y)) + dot4(b, lo_bf(w.z), hi_bf(w.z), lo_bf(w.w), hi_bf(w.w));
    }
    static __device__ __forceinline__ void load16(const u8* wr, const u8* sr, int k0, int cols, float* v) {
        if (k0 + 16 <= cols) {
            uint4 a = ld16(wr + 2 * k0), b = ld16(wr + 2 * k0 + 16);
#pragma unroll
            for (int c = 0; c < 4; c++) {
                v[2 * c] = lo_bf(word4(a, c)); v[2 * c + 1] = hi_bf(word4(a, c));
                v[8 + 2 * c] = lo_bf(word4(b, c)); v[8 + 2 * c + 1] = hi_bf(word4(b, c));
            }
        } else {
            const u16* p = (const u16*)wr;
#pragma unroll
            for (int i = 0; i < 16; i++) v[i] = k0 + i < cols ? __int_as_float(((u32)p[k0 + i]) << 16) : 0.0f;
        }
    }
};

struct Q8_0 {
    static const bool Q8 = true;
    static const int QK = 32, U = 2;
    struct Raw { uint4 a, b; u16 d; };
    static __device__ __forceinline__ Raw load(const u8* wr, const u8* sr, int u) {
        Raw r;
        r.a = ld16(wr + 32 * u);
        r.b = ld16(wr + 32 * u + 16);
        r.d = __ldg((const u16*)sr + u);
        return r;
    }
    static __device__ __forceinline__ float dotq(const Raw& w, const uint4* x, const float2* ds, int u) {
        int s = 0;
#pragma unroll
        for (int c = 0; c < 4; c++) {
            s = dp4a(word4(w.a, c), word4(x[0], c), s);
            s = dp4a(word4(w.b, c), word4(x[1], c), s);
        }
        return h2f(w.d) * (ds[0].x * (float)s);
    }
    static __device__ __forceinline__ void load16(const u8* wr, const u8* sr, int k0, int cols, float* v) {
        int b = k0 >> 5;
        uint4 q = ld16(wr + 32 * b + 16 * ((k0 >> 4) & 1));
        float d = h2f(__ldg((const u16*)sr + b));
#pragma unroll
        for (int i = 0; i < 16; i++) v[i] = d * i8f(byte16(q, i));
    }
};

// The three formats with Q4_0's nibble order; `Kind` picks the scale rule.
template <int KIND>  // 0: q4_0 (d), 1: q4_1 (d, m), 2: gptq4 (d, z)
struct Q4 {
    static const bool Q8 = true;
    static const int QK = 32, U = 2;
    struct Raw { uint4 q; u32 s; };
    static __device__ __forceinline__ Raw load(const u8* wr, const u8* sr, int u) {
        Raw r;
        r.q = ld16(wr + 16 * u);
        r.s = KIND == 0 ? (u32)__ldg((const u16*)sr + u) : __ldg((const u32*)sr + u);
        return r;
    }
    // Σ q·xd = d_x·Σ q·q_x with the nibbles as bytes (low: weights 4c.., high: 16 + 4c..);
    // then q4_0: d·(Σ q·xd − 8·s_x), q4_1: d·Σ q·xd + m·s_x, gptq4: d·(Σ q·xd − z·s_x)
    static __device__ __forceinline__ float dotq(const Raw& w, const uint4* x, const float2* ds, int u) {
        int s = 0;
#pragma unroll
        for (int c = 0; c < 4; c++) {
            u32 v = word4(w.q, c);
            s = dp4a(v & 0x0F0F0F0Fu, word4(x[0], c), s);
            s = dp4a((v >> 4) & 0x0F0F0F0Fu, word4(x[1], c), s);
        }
        float d = lo_h(w.s), qx = ds[0].x * (float)s;
        if (KIND == 0) return d * (qx - 8.0f * ds[0].y);
        if (KIND == 1) return d * qx + hi_h(w.s) * ds[0].y;
        return d * (qx - hi_h(w.s) * ds[0].y);
    }
    static __device__ __forceinline__ void load16(const u8* wr, const u8* sr, int k0, int cols, float* v) {
        int b = k0 >> 5, sh = (k0 & 16) ? 4 : 0;
        uint4 q = ld16(wr + 16 * b);
        u32 s = KIND == 0 ? (u32)__ldg((const u16*)sr + b) : __ldg((const u32*)sr + b);
        float d = lo_h(s);
#pragma unroll
        for (int i = 0; i < 16; i++) {
            float n = (float)((byte16(q, i) >> sh) & 15u);
            v[i] = KIND == 0 ? d * (n - 8.0f) : KIND == 1 ? d * n + hi_h(s) : d * (n - hi_h(s));
        }
    }
};
typedef Q4<0> Q4_0;
typedef Q4<1> Q4_1;
typedef Q4<2> GPTQ4;

struct Q4K {
    // unit u: super-block u / 4, sub-block pair p = u % 4 (columns 64u .. 64u + 63): the
    // 16-byte header and the pair's 32 bytes of nibbles (four lanes share a super-block)
    static const bool Q8 = true;
    static const int QK = 64, U = 1;
    struct Raw { uint4 h, q0, q1; };
    static __device__ __forceinline__ Raw load(const u8* wr, const u8* sr, int u) {
        const u8* b = wr + 144 * (u >> 2);
        int p = u & 3;
        Raw r;
        r.h = ld16(b);
        r.q0 = ld16(b + 16 + 32 * p);
        r.q1 = ld16(b + 32 + 32 * p);
        return r;
    }
    // sub-block j: d·sc_j·Σ q·xd − dmin·m_j·s_x
    static __device__ __forceinline__ float dotq(const Raw& w, const uint4* x, const float2* ds, int u) {
        int j = 2 * (u & 3);
        int s0 = 0, s1 = 0;
#pragma unroll
        for (int c = 0; c < 4; c++) {
            u32 a = word4(w.q0, c), b = word4(w.q1, c);  // weights 4c.. and 16 + 4c.. of j and j + 1
            s0 = dp4a(a & 0x0F0F0F0Fu, word4(x[0], c), s0);
            s0 = dp4a(b & 0x0F0F0F0Fu, word4(x[1], c), s0);
            s1 = dp4a((a >> 4) & 0x0F0F0F0Fu, word4(x[2], c), s1);
            s1 = dp4a((b >> 4) & 0x0F0F0F0Fu, word4(x[3], c), s1);
        }
        float2 dm0 = q4k_dm(w.h, j), dm1 = q4k_dm(w.h, j + 1);
        return (dm0.x * (ds[0].x * (float)s0) - dm0.y * ds[0].y) + (dm1.x * (ds[1].x * (float)s1) - dm1.y * ds[1].y);
    }
    static __device__ __forceinline__ void load16(const u8* wr, const u8* sr, int k0, int cols, float* v) {
        const u8* b = wr + 144 * (k0 >> 8);
        int e = k0 & 255, j = e >> 5;
        uint4 h = ld16(b);
        uint4 q = ld16(b + 16 + 32 * (j >> 1) + (e & 16));
        float2 dm = q4k_dm(h, j);
        int sh = (j & 1) ? 4 : 0;
#pragma unroll
        for (int i = 0; i < 16; i++) v[i] = dm.x * (float)((byte16(q, i) >> sh) & 15u) - dm.y;
    }
};

struct Q6K {
    // unit u: super-block u / 2, half h = u % 2 (columns 128u .. 128u + 127): the half's 64
    // bytes of ql, 32 of qh and 8 scales (two lanes share a super-block's row of scales)
    static const bool Q8 = true;
    static const int QK = 128, U = 1;
    struct Raw { uint4 l[4], h[2]; uint2 sc; u16 d; };
    static __device__ __forceinline__ Raw load(const u8* wr, const u8* sr, int u) {
        const u8* b = wr + 208 * (u >> 1);
        int h = u & 1;
        Raw r;
#pragma unroll
        for (int i = 0; i < 4; i++) r.l[i] = ld16(b + 64 * h + 16 * i);
#pragma unroll
        for (int i = 0; i < 2; i++) r.h[i] = ld16(b + 128 + 32 * h + 16 * i);
        r.sc = __ldg((const uint2*)(b + 192 + 8 * h));
        r.d = __ldg((const u16*)sr + (u >> 1));
        return r;
    }
    // group g (activation block 4u + g): d·Σ_{half} sc·(Σ q·q_x − 32·Σ q_x)·d_x, q in 0..63
    static __device__ __forceinline__ float dotq(const Raw& w, const uint4* x, const float2* ds, int u) {
        float r = 0.0f;
#pragma unroll
        for (int g = 0; g < 4; g++) {
            int p[2] = {0, 0}, sx[2] = {0, 0};
#pragma unroll
            for (int c = 0; c < 8; c++) {  // weights 4c..4c+3 of the group; c / 4 picks the scale
                u32 l = word4(w.l[2 * (g & 1) + (c >> 2)], c & 3);
                u32 q = ((g < 2 ? l : l >> 4) & 0x0F0F0F0Fu) | (((word4(w.h[c >> 2], c & 3) >> (2 * g)) & 0x03030303u) << 4);
                u32 xv = word4(x[2 * g + (c >> 2)], c & 3);
                p[c >> 2] = dp4a(q, xv, p[c >> 2]);
                sx[c >> 2] = dp4a(0x01010101u, xv, sx[c >> 2]);
            }
            u32 sw = g < 2 ? w.sc.x : w.sc.y;  // scales 2g and 2g + 1 of the half
            float sa = i8f(sw >> (16 * (g & 1))), sb = i8f(sw >> (16 * (g & 1) + 8));
            r += ds[g].x * (sa * (float)(p[0] - 32 * sx[0]) + sb * (float)(p[1] - 32 * sx[1]));
        }
        return h2f(w.d) * r;
    }
    static __device__ __forceinline__ void load16(const u8* wr, const u8* sr, int k0, int cols, float* v) {
        const u8* b = wr + 208 * (k0 >> 8);
        int e = k0 & 255, h = e >> 7, g = (e >> 5) & 3, l0 = e & 16;
        uint4 ql = ld16(b + 64 * h + 32 * (g & 1) + l0);
        uint4 qh = ld16(b + 128 + 32 * h + l0);
        float d = h2f(__ldg((const u16*)sr + (k0 >> 8))) * i8f(__ldg(b + 192 + 8 * h + 2 * g + (l0 >> 4)));
        int sl = g >= 2 ? 4 : 0, shh = 2 * g;
#pragma unroll
        for (int i = 0; i < 16; i++) {
            u32 q = ((byte16(ql, i) >> sl) & 15u) | (((byte16(qh, i) >> shh) & 3u) << 4);
            v[i] = d * ((float)q - 32.0f);
        }
    }
};

// ---------------------------------------------------------------------------------------
// Matrix-vector products for decode (one token).
//
// Float formats: one warp per output row, lanes striding over the row's units with four
// units' loads in flight, then a shuffle reduction. 256 threads = 8 rows per block.
//
// Quantized formats, on Q8 activations: a warp per two rows (mv: two neighbouring rows,
// possibly of two matrices; glu: row r of gate and of up). Each step a lane loads U units of
// both rows (adjacent lanes read adjacent 16-byte chunks) and the units' int8 activations
// once for both rows, and takes the products with dp4a; one shuffle reduction serves both
// rows. In mv, `ks` (1, 2 or 4) warps may share a row pair, taking interleaved runs of 32
// units, and add up through shared memory: a matrix of few rows (o, down) then still has
// enough loads in flight. 256 threads = 16 / ks rows per block in mv, 8 row pairs in glu.

template <class F>
__device__ __forceinline__ float row_dot(const u8* wr, const u8* sr, const float* x, int cols, int lane) {
    int nu = (cols + F::UNIT - 1) / F::UNIT;
    float acc = 0.0f;
    int u = lane;
    for (; u + 96 < nu; u += 128) {
        typename F::Raw r0 = F::load(wr, sr, u), r1 = F::load(wr, sr, u + 32), r2 = F::load(wr, sr, u + 64),
                        r3 = F::load(wr, sr, u + 96);
        acc += F::dot(r0, x, u, cols) + F::dot(r1, x, u + 32, cols) + F::dot(r2, x, u + 64, cols) +
               F::dot(r3, x, u + 96, cols);
    }
    for (; u < nu; u += 32) acc += F::dot(F::load(wr, sr, u), x, u, cols);
    return warp_sum(acc);
}

// acc[r] += Σ over units first, first + stride, ... of W_r · xd for the R rows at wr[r], sr[r]
// (cols a multiple of F::QK), xq the Q8 activations.
template <class F, int R>
__device__ __forceinline__ void rows_dotq(const u8* const* wr, const u8* const* sr, const u8* xq, int cols, int first,
                                          int stride, float* acc) {
    const int nu = cols / F::QK;
    const float2* xd = (const float2*)(xq + cols);
    for (int u0 = first; u0 < nu; u0 += stride * F::U) {
        typename F::Raw w[F::U][R];
        uint4 xv[F::U][F::QK / 16];
        float2 ds[F::U][F::QK / 32];
#pragma unroll
        for (int i = 0; i < F::U; i++) {
            int u = u0 + stride * i;
            if (u < nu) {
#pragma unroll
                for (int r = 0; r < R; r++) w[i][r] = F::load(wr[r], sr[r], u);
#pragma unroll
                for (int k = 0; k < F::QK / 16; k++) xv[i][k] = ld16(xq + (u64)u * F::QK + 16 * k);
#pragma unroll
                for (int k = 0; k < F::QK / 32; k++) ds[i][k] = __ldg(xd + u * (F::QK / 32) + k);
            }
        }
#pragma unroll
        for (int i = 0; i < F::U; i++) {
            int u = u0 + stride * i;
            if (u < nu) {
#pragma unroll
                for (int r = 0; r < R; r++) acc[r] += F::dotq(w[i][r], xv[i], ds[i], u);
            }
        }
    }
}

// Warp sums of a and b in one reduction: lane 0 gets Σ a, lane 16 gets Σ b.
__device__ __forceinline__ float warp_sum2(float a, float b, int lane) {
    bool hi = lane & 16;
    float v = (hi ? b : a) + __shfl_xor_sync(0xffffffffu, hi ? a : b, 16);
#pragma unroll
    for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Up to three matrices of one format and width that share the input x (q, k and v): rows
// of matrix 0, then 1, then 2. out_m[r] = W_m[r] · x. x is f32, or Q8 for quantized formats
// (which take ks, above; the float formats ignore it).
template <class F>
__device__ __forceinline__ void matvec(const u8* w0, const u8* s0, float* o0, int rows0, const u8* w1, const u8* s1,
                                       float* o1, int rows1, const u8* w2, const u8* s2, float* o2, int rows2,
                                       const void* x, int cols, int wrow, int srow, int ks) {
    int lane = threadIdx.x & 31;
    if constexpr (F::Q8) {
        __shared__ float red[8][2];
        int total = rows0 + rows1 + rows2;
        int warp = threadIdx.x >> 5, slice = warp & (ks - 1);
        int r0 = (blockIdx.x * (8 / ks) + warp / ks) * 2;
        if (total == 0 || (ks == 1 && r0 >= total)) return;  // (with ks > 1 every warp reaches the barrier)
        const u8* wr[2];
        const u8* sr[2];
#pragma unroll
        for (int k = 0; k < 2; k++) {
            int r = min(r0 + k, total - 1);  // a missing row repeats the last, unwritten
            const u8* w = r < rows0 ? w0 : r < rows0 + rows1 ? w1 : w2;
            const u8* s = r < rows0 ? s0 : r < rows0 + rows1 ? s1 : s2;
            r -= r < rows0 ? 0 : r < rows0 + rows1 ? rows0 : rows0 + rows1;
            wr[k] = w + (u64)r * wrow;
            sr[k] = s + (u64)r * srow;
        }
        float acc[2] = {0.0f, 0.0f};
        rows_dotq<F, 2>(wr, sr, (const u8*)x, cols, 32 * slice + lane, 32 * ks, acc);
        float v = warp_sum2(acc[0], acc[1], lane);
        if (ks > 1) {
            if ((lane & 15) == 0) red[warp][lane >> 4] = v;
            __syncthreads();
            if (slice != 0) return;
            for (int k = 1; k < ks; k++) v += red[warp + k][lane >> 4];
        }
        int r = r0 + (lane >> 4);  // lane 0: row r0, lane 16: row r0 + 1
        if ((lane & 15) == 0 && r < total) {
            if (r < rows0) o0[r] = v;
            else if (r < rows0 + rows1) o1[r - rows0] = v;
            else o2[r - rows0 - rows1] = v;
        }
    } else {
        int r = blockIdx.x * 8 + (threadIdx.x >> 5);
        const u8* w = w0;
        const u8* s = s0;
        float* o = o0;
        if (r >= rows0) {
            r -= rows0;
            w = w1; s = s1; o = o1;
            if (r >= rows1) {
                r -= rows1;
                w = w2; s = s2; o = o2;
                if (r >= rows2) return;
            }
        }
        float acc = row_dot<F>(w + (u64)r * wrow, s + (u64)r * srow, (const float*)x, cols, lane);
        if (lane == 0) o[r] = acc;
    }
}

// After each block of 8 rows wrote v[8·blockIdx.x ..], the last of the four blocks of each
// group of 32 rows to finish writes the group as Q8 activations (rows a multiple of 32); a
// counter per group (zero, and reset) finds it, as attention's split merge does.
__device__ __forceinline__ void q8_rows_last_block(const float* v, int rows, u8* q8, u32* cnt) {
    __shared__ int last;
    __threadfence();
    __syncthreads();
    int grp = blockIdx.x >> 2;
    if (threadIdx.x == 0) last = atomicAdd(&cnt[grp], 1u) == 3u;
    __syncthreads();
    if (!last || threadIdx.x >= 32) return;
    __threadfence();
    int i = 32 * grp + threadIdx.x;
    q8_block(__ldcg(v + i), q8, i, rows);
    if (threadIdx.x == 0) cnt[grp] = 0;
}

// SwiGLU fused with its two products: up[r] = W_up[r] · x, gate[r] = silu(W_gate[r] · x) · up[r].
// With q8 (rows a multiple of 32) gate is also written as Q8 activations there, for the
// quantized product that reads it next (cnt: rows / 32 counters).
template <class F>
__device__ __forceinline__ void glu(const u8* wg, const u8* sg, const u8* wu, const u8* su, float* gate, float* up,
                                    int rows, const void* x, int cols, int wrow, int srow, u8* q8, u32* cnt) {
    int lane = threadIdx.x & 31;
    int r = blockIdx.x * 8 + (threadIdx.x >> 5);
    if (r >= rows) return;
    float g, u;
    if constexpr (F::Q8) {
        const u8* wr[2] = {wg + (u64)r * wrow, wu + (u64)r * wrow};
        const u8* sr[2] = {sg + (u64)r * srow, su + (u64)r * srow};
        float acc[2] = {0.0f, 0.0f};
        rows_dotq<F, 2>(wr, sr, (const u8*)x, cols, lane, 32, acc);
        float v = warp_sum2(acc[0], acc[1], lane);
        g = v;
        u = __shfl_xor_sync(0xffffffffu, v, 16);  // lane 0: gate's sum, and up's from lane 16
    } else {
        g = row_dot<F>(wg + (u64)r * wrow, sg + (u64)r * srow, (const float*)x, cols, lane);
        u = row_dot<F>(wu + (u64)r * wrow, su + (u64)r * srow, (const float*)x, cols, lane);
    }
    if (lane == 0) {
        up[r] = u;
        gate[r] = g / (1.0f + expf(-g)) * u;
    }
    if (q8) q8_rows_last_block(gate, rows, q8, cnt);
}

// ---------------------------------------------------------------------------------------
// Matrix products for prefill: out[t, r] = Σ_k x[t, k] · W[r, k] for t < n, r < rows.
// Blocks take 64 tokens × 64 weight rows; blockIdx.x walks the tokens, so the blocks that
// share a weight tile run together and it is read from DRAM once.

// Tensor cores (sm_80+): both tiles are staged in shared memory as f16 ([row][k], k
// contiguous, rows padded to 40 halves so fragment loads hit distinct banks), the weights
// decoded once per tile; mma.sync m16n8k16 accumulates in f32. 4 warps, each 32 × 32.
// The next k-step's tiles are loaded into registers while this one is multiplied.
template <class F>
__device__ __forceinline__ void matmul_tc(const u8* w, const u8* s, const float* x, float* out, int n, int rows, int cols,
                                          int x_stride, int out_stride, int wrow, int srow) {
#if __CUDA_ARCH__ >= 800
    __shared__ __align__(16) u16 As[64 * 40];
    __shared__ __align__(16) u16 Bs[64 * 40];
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    int g = lane >> 2, tq = lane & 3;
    int t0 = blockIdx.x * 64, r0 = blockIdx.y * 64;
    int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    // loader role: tile row lr, sixteen k from lk
    int lr = tid >> 1, lk = (tid & 1) * 16;
    int lt = t0 + lr, lw = r0 + lr;
    const float* xr = x + (u64)(lt < n ? lt : 0) * x_stride;
    const u8* wr = w + (u64)(lw < rows ? lw : 0) * wrow;
    const u8* sr = s + (u64)(lw < rows ? lw : 0) * srow;
    float acc[2][4][4];
#pragma unroll
    for (int a = 0; a < 2; a++)
#pragma unroll
        for (int b = 0; b < 4; b++)
#pragma unroll
            for (int c = 0; c < 4; c++) acc[a][b][c] = 0.0f;
    float xv[16], wv[16];
    // prefetch k-step 0
#pragma unroll
    for (int i = 0; i < 16; i++) xv[i] = (lt < n && lk + i < cols) ? __ldg(xr + lk + i) : 0.0f;
    if (lw < rows && lk < cols) F::load16(wr, sr, lk, cols, wv);
    else {
#pragma unroll
        for (int i = 0; i < 16; i++) wv[i] = 0.0f;
    }
    for (int k0 = 0; k0 < cols; k0 += 32) {
        uint4 pa0 = make_uint4(pack_h2(xv[0], xv[1]), pack_h2(xv[2], xv[3]), pack_h2(xv[4], xv[5]), pack_h2(xv[6], xv[7]));
        uint4 pa1 = make_uint4(pack_h2(xv[8], xv[9]), pack_h2(xv[10], xv[11]), pack_h2(xv[12], xv[13]), pack_h2(xv[14], xv[15]));
        uint4 pb0 = make_uint4(pack_h2(wv[0], wv[1]), pack_h2(wv[2], wv[3]), pack_h2(wv[4], wv[5]), pack_h2(wv[6], wv[7]));
        uint4 pb1 = make_uint4(pack_h2(wv[8], wv[9]), pack_h2(wv[10], wv[11]), pack_h2(wv[12], wv[13]), pack_h2(wv[14], wv[15]));
        *(uint4*)&As[lr * 40 + lk] = pa0;
        *(uint4*)&As[lr * 40 + lk + 8] = pa1;
        *(uint4*)&Bs[lr * 40 + lk] = pb0;
        *(uint4*)&Bs[lr * 40 + lk + 8] = pb1;
        __syncthreads();
        int kn = k0 + 32 + lk;
        if (k0 + 32 < cols) {
#pragma unroll
            for (int i = 0; i < 16; i++) xv[i] = (lt < n && kn + i < cols) ? __ldg(xr + kn + i) : 0.0f;
            if (lw < rows && kn < cols) F::load16(wr, sr, kn, cols, wv);
            else {
#pragma unroll
                for (int i = 0; i < 16; i++) wv[i] = 0.0f;
            }
        }
#pragma unroll
        for (int kk = 0; kk < 32; kk += 16) {
            u32 a[2][4], b[4][2];
#pragma unroll
            for (int mi = 0; mi < 2; mi++) {
                const u16* p = &As[(wm + mi * 16 + g) * 40 + kk + 2 * tq];
                a[mi][0] = *(const u32*)p;
                a[mi][1] = *(const u32*)(p + 8 * 40);
                a[mi][2] = *(const u32*)(p + 8);
                a[mi][3] = *(const u32*)(p + 8 * 40 + 8);
            }
#pragma unroll
            for (int ni = 0; ni < 4; ni++) {
                const u16* p = &Bs[(wn + ni * 8 + g) * 40 + kk + 2 * tq];
                b[ni][0] = *(const u32*)p;
                b[ni][1] = *(const u32*)(p + 8);
            }
#pragma unroll
            for (int mi = 0; mi < 2; mi++)
#pragma unroll
                for (int ni = 0; ni < 4; ni++) mma_16816(acc[mi][ni], a[mi], b[ni]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++) {
            int t = t0 + wm + mi * 16 + g, r = r0 + wn + ni * 8 + 2 * tq;
#pragma unroll
            for (int hh = 0; hh < 2; hh++) {
                int tt = t + 8 * hh;
                if (tt < n) {
                    if (r < rows) out[(u64)tt * out_stride + r] = acc[mi][ni][2 * hh];
                    if (r + 1 < rows) out[(u64)tt * out_stride + r + 1] = acc[mi][ni][2 * hh + 1];
                }
            }
        }
#endif
}

// f32 on the CUDA cores (f32 weights, and every format where tensor cores are off or
// absent): 16 × 16 threads with a 4 × 4 register block each, k advancing 16 at a time
// through shared memory ([k][row], so every thread reads its four rows as one float4).
template <class F>
__device__ __forceinline__ void matmul_simt(const u8* w, const u8* s, const float* x, float* out, int n, int rows,
                                            int cols, int x_stride, int out_stride, int wrow, int srow) {
    __shared__ __align__(16) float xs[16 * 64];
    __shared__ __align__(16) float ws[16 * 64];
    int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
    int t0 = blockIdx.x * 64, r0 = blockIdx.y * 64;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < cols; k0 += 16) {
        float v[16];
        if (tid < 64) {
            int t = t0 + tid;
            const float* xr = x + (u64)(t < n ? t : 0) * x_stride;
#pragma unroll
            for (int i = 0; i < 16; i++) v[i] = (t < n && k0 + i < cols) ? __ldg(xr + k0 + i) : 0.0f;
#pragma unroll
            for (int i = 0; i < 16; i++) xs[i * 64 + tid] = v[i];
        } else if (tid < 128) {
            int r = r0 + tid - 64;
            if (r < rows) F::load16(w + (u64)r * wrow, s + (u64)r * srow, k0, cols, v);
            else {
#pragma unroll
                for (int i = 0; i < 16; i++) v[i] = 0.0f;
            }
#pragma unroll
            for (int i = 0; i < 16; i++) ws[i * 64 + tid - 64] = v[i];
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < 16; kk++) {
            float4 a = *(const float4*)&xs[kk * 64 + 4 * ty];
            float4 b = *(const float4*)&ws[kk * 64 + 4 * tx];
            float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] += av[i] * bv[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int t = t0 + 4 * ty + i;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int r = r0 + 4 * tx + j;
            if (t < n && r < rows) out[(u64)t * out_stride + r] = acc[i][j];
        }
    }
}

// Embedding gather: out[t, c] = W[ids[t], c]; with a column permutation (a GPTQ matrix's
// stored order) out[t, perm[c]] = W[ids[t], c]. 128 threads × 16 columns per block.
template <class F>
__device__ __forceinline__ void embed(const u8* w, const u8* s, const u32* perm, const u32* ids, float* out, int cols,
                                      int wrow, int srow, int out_stride) {
    int t = blockIdx.y;
    int k0 = (blockIdx.x * 128 + threadIdx.x) * 16;
    if (k0 >= cols) return;
    u32 id = ids[t];
    float v[16];
    F::load16(w + (u64)id * wrow, s + (u64)id * srow, k0, cols, v);
    float* o = out + (u64)t * out_stride;
#pragma unroll
    for (int i = 0; i < 16; i++)
        if (k0 + i < cols) o[perm ? perm[k0 + i] : k0 + i] = v[i];
}

// mv_ and glu_ read x as f32 for the float formats and as Q8 activations for the others.
#define WEIGHT_KERNELS(NAME, F)                                                                                         \
    extern "C" __global__ void __launch_bounds__(256) mv_##NAME(                                                        \
        const u8* w0, const u8* s0, float* o0, int rows0, const u8* w1, const u8* s1, float* o1, int rows1,            \
        const u8* w2, const u8* s2, float* o2, int rows2, const void* x, int cols, int wrow, int srow, int ks) {         \
        matvec<F>(w0, s0, o0, rows0, w1, s1, o1, rows1, w2, s2, o2, rows2, x, cols, wrow, srow, ks);                     \
    }                                                                                                                   \
    extern "C" __global__ void __launch_bounds__(256) glu_##NAME(const u8* wg, const u8* sg, const u8* wu,              \
                                                                 const u8* su, float* gate, float* up, int rows,        \
                                                                 const void* x, int cols, int wrow, int srow, u8* q8,   \
                                                                 u32* cnt) {                                            \
        glu<F>(wg, sg, wu, su, gate, up, rows, x, cols, wrow, srow, q8, cnt);                                           \
    }                                                                                                                   \
    extern "C" __global__ void __launch_bounds__(128) mmtc_##NAME(const u8* w, const u8* s, const float* x, float* out, \
                                                                  int n, int rows, int cols, int x_stride,             \
                                                                  int out_stride, int wrow, int srow) {                 \
        matmul_tc<F>(w, s, x, out, n, rows, cols, x_stride, out_stride, wrow, srow);                                    \
    }                                                                                                                   \
    extern "C" __global__ void __launch_bounds__(256) mm_##NAME(const u8* w, const u8* s, const float* x, float* out,   \
                                                                int n, int rows, int cols, int x_stride,               \
                                                                int out_stride, int wrow, int srow) {                   \
        matmul_simt<F>(w, s, x, out, n, rows, cols, x_stride, out_stride, wrow, srow);                                  \
    }                                                                                                                   \
    extern "C" __global__ void __launch_bounds__(128) embed_##NAME(const u8* w, const u8* s, const u32* perm,          \
                                                                   const u32* ids, float* out, int cols, int wrow,      \
                                                                   int srow, int out_stride) {                          \
        embed<F>(w, s, perm, ids, out, cols, wrow, srow, out_stride);                                                   \
    }

WEIGHT_KERNELS(f32, F32)
WEIGHT_KERNELS(f16, F16)
WEIGHT_KERNELS(bf16, BF16)
WEIGHT_KERNELS(q8_0, Q8_0)
WEIGHT_KERNELS(q4_0, Q4_0)
WEIGHT_KERNELS(q4_1, Q4_1)
WEIGHT_KERNELS(gptq4, GPTQ4)
WEIGHT_KERNELS(q4_k, Q4K)
WEIGHT_KERNELS(q6_k, Q6K)

// ---------------------------------------------------------------------------------------
// Row ops

// Block-wide sum over 256 threads; every thread gets the result.
__device__ __forceinline__ float block_sum256(float v, float* red) {
    v = warp_sum(v);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float r = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; i++) r += red[i];
    __syncthreads();
    return r;
}

// Q8 activations of x[perm[i]] (x[i] when perm is null), i < cols, at q; cols a multiple of
// 32 (a quantized matrix's width). Fuses GPTQ's gather for one token.
extern "C" __global__ void __launch_bounds__(256) quantize_q8(const float* x, const u32* perm, u8* q, int cols) {
    int i = blockIdx.x * 256 + threadIdx.x;
    if (i >= cols) return;  // whole warps
    q8_block(perm ? x[perm[i]] : x[i], q, i, cols);
}

// RMSNorm: out[t] = x[first + t] / sqrt(mean(x[first + t]²) + eps) · w, one block per row.
// With q8 (one row, cols a multiple of 32) the row is also written as Q8 activations there,
// for the quantized product that reads it next.
extern "C" __global__ void __launch_bounds__(256) rms_norm(const float* x, const float* w, float* out, int cols, int first,
                                                           float eps, u8* q8) {
    __shared__ float red[8];
    const float* xr = x + (u64)(first + blockIdx.x) * cols;
    float* o = out + (u64)blockIdx.x * cols;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < cols; i += 256) ss += xr[i] * xr[i];
    float inv = rsqrtf(block_sum256(ss, red) / (float)cols + eps);
    for (int i = threadIdx.x; i < cols; i += 256) {
        float v = xr[i] * inv * w[i];
        o[i] = v;
        if (q8) q8_block(v, q8, i, cols);
    }
}

// The residual add fused with the next RMSNorm: x[t] += y[t]; out[t] = rmsnorm(x[t]) · w;
// q8 as in rms_norm.
extern "C" __global__ void __launch_bounds__(256) add_rms_norm(float* x, const float* y, const float* w, float* out, int cols,
                                                               float eps, u8* q8) {
    __shared__ float red[8];
    float* xr = x + (u64)blockIdx.x * cols;
    const float* yr = y + (u64)blockIdx.x * cols;
    float* o = out + (u64)blockIdx.x * cols;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < cols; i += 256) {
        float v = xr[i] + yr[i];
        xr[i] = v;
        ss += v * v;
    }
    float inv = rsqrtf(block_sum256(ss, red) / (float)cols + eps);
    for (int i = threadIdx.x; i < cols; i += 256) {
        float v = xr[i] * inv * w[i];
        o[i] = v;
        if (q8) q8_block(v, q8, i, cols);
    }
}

// Rotate pair j of head h of token t by table[t, j] = (cos, sin): pairs (j, j + hd/2), or
// (2j, 2j + 1) when interleaved (llama.cpp's permuted GGUF rows).
__device__ __forceinline__ void rope_pair(float* x, const float* table, int i, int n_heads, int hd, int stride,
                                          int interleaved) {
    int half = hd / 2;
    int j = i % half, h = (i / half) % n_heads, t = i / (half * n_heads);
    float c = table[t * hd + 2 * j], s = table[t * hd + 2 * j + 1];
    float* base = x + (u64)t * stride + h * hd;
    int a = interleaved ? 2 * j : j, b = interleaved ? 2 * j + 1 : j + half;
    float x0 = base[a], x1 = base[b];
    base[a] = x0 * c - x1 * s;
    base[b] = x0 * s + x1 * c;
}

extern "C" __global__ void rope(float* x, const float* table, int n, int n_heads, int hd, int stride, int interleaved) {
    int i = blockIdx.x * 256 + threadIdx.x;
    if (i < n * n_heads * (hd / 2)) rope_pair(x, table, i, n_heads, hd, stride, interleaved);
}

// k_cache[pos + t] = k[t], v_cache[pos + t] = v[t] for t < n (k, v dense [n, kv_dim]).
// KV: float, or u16 (f16 bits) for the `_f16` kernels.
template <typename KV>
__device__ __forceinline__ void store_kv_t(const float* k, const float* v, KV* kc, KV* vc, const u32* pos, int n, int kv_dim) {
    int i = blockIdx.x * 256 + threadIdx.x;
    if (i >= n * kv_dim) return;
    u64 o = (u64)(*pos) * kv_dim + i;
    kv_st(kc, o, k[i]);
    kv_st(vc, o, v[i]);
}
extern "C" __global__ void store_kv(const float* k, const float* v, float* kc, float* vc, const u32* pos, int n, int kv_dim) {
    store_kv_t(k, v, kc, vc, pos, n, kv_dim);
}
extern "C" __global__ void store_kv_f16(const float* k, const float* v, u16* kc, u16* vc, const u32* pos, int n, int kv_dim) {
    store_kv_t(k, v, kc, vc, pos, n, kv_dim);
}

// RoPE of q and k and the KV-cache store, in one launch: threads [0, nq) rotate q, [nq, nq + nk)
// rotate k and store both elements of their pair, the rest store v.
template <typename KV>
__device__ __forceinline__ void rope_store_t(float* q, int q_heads, int q_stride, float* k, const float* v, int kv_heads,
                                             const float* table, int n, int hd, int interleaved, KV* kc, KV* vc,
                                             const u32* pos) {
    int i = blockIdx.x * 256 + threadIdx.x;
    int half = hd / 2, kv_dim = kv_heads * hd;
    int nq = n * q_heads * half, nk = n * kv_heads * half;
    if (i < nq) {
        rope_pair(q, table, i, q_heads, hd, q_stride, interleaved);
        return;
    }
    i -= nq;
    u64 base = (u64)(*pos) * kv_dim;
    if (i < nk) {
        int j = i % half, h = (i / half) % kv_heads, t = i / (half * kv_heads);
        float c = table[t * hd + 2 * j], s = table[t * hd + 2 * j + 1];
        int a = h * hd + (interleaved ? 2 * j : j), b = h * hd + (interleaved ? 2 * j + 1 : j + half);
        float* kr = k + (u64)t * kv_dim;
        float x0 = kr[a], x1 = kr[b];
        float ya = x0 * c - x1 * s, yb = x0 * s + x1 * c;
        kr[a] = ya;
        kr[b] = yb;
        kv_st(kc, base + (u64)t * kv_dim + a, ya);
        kv_st(kc, base + (u64)t * kv_dim + b, yb);
        return;
    }
    i -= nk;
    if (i < n * kv_dim) kv_st(vc, base + i, v[i]);
}
extern "C" __global__ void rope_store(float* q, int q_heads, int q_stride, float* k, const float* v, int kv_heads,
                                      const float* table, int n, int hd, int interleaved, float* kc, float* vc,
                                      const u32* pos) {
    rope_store_t(q, q_heads, q_stride, k, v, kv_heads, table, n, hd, interleaved, kc, vc, pos);
}
extern "C" __global__ void rope_store_f16(float* q, int q_heads, int q_stride, float* k, const float* v, int kv_heads,
                                          const float* table, int n, int hd, int interleaved, u16* kc, u16* vc,
                                          const u32* pos) {
    rope_store_t(q, q_heads, q_stride, k, v, kv_heads, table, n, hd, interleaved, kc, vc, pos);
}

// ---------------------------------------------------------------------------------------
// Causal GQA attention over the KV cache:
//   out[t, h] = Σ_{s ≤ pos + t} softmax_s(q[t, h] · k_cache[s, g] / √hd) · v_cache[s, g]
// with g = h / (n_heads / n_kv_heads). Block (h, t, split) of 4 warps takes keys
// [split·chunk, (split + 1)·chunk) of its query's len = pos + t + 1 keys, chunk =
// ceil(len / splits); each warp takes every fourth key (lanes split the head dims, a
// shuffle sum gives the score) with an online softmax, and the warps merge in shared
// memory. With one split the block writes the output; with several it writes its
// (max, sum, weighted values) to `part` and the last block of the head to finish (an atomic
// count) merges them, so a decode step spreads each head over many multiprocessors in one
// launch. hd ≤ 256. With q8 (one token, hd a multiple of 32) the output row is also written
// as Q8 activations there, for the quantized product that reads it next.
template <typename KV>
__device__ __forceinline__ void attention_t(const float* q, const KV* kc, const KV* vc, float* out, float* part,
                                            u32* counters, const u32* pos, int n_heads, int n_kv_heads, int hd,
                                            int q_stride, int kv_dim, int out_stride, float scale, int splits, u8* q8) {
    __shared__ float sm_m[4], sm_l[4];
    __shared__ float sm_acc[4][256];
    __shared__ int last;
    int h = blockIdx.x, t = blockIdx.y, sp = blockIdx.z;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int kv_off = (h / (n_heads / n_kv_heads)) * hd;
    int len = (int)(*pos) + t + 1;
    int chunk = (len + splits - 1) / splits;
    int start = sp * chunk, end = min(len, start + chunk);
    const float* qr = q + (u64)t * q_stride + h * hd;
    float qv[8], acc[8];
#pragma unroll
    for (int c = 0; c < 8; c++) {
        int d = lane + 32 * c;
        qv[c] = d < hd ? qr[d] * scale : 0.0f;
        acc[c] = 0.0f;
    }
    float m = NEG_INF, l = 0.0f;
    for (int sidx = start + warp; sidx < end; sidx += 4) {
        const KV* kr = kc + (u64)sidx * kv_dim + kv_off;
        const KV* vr = vc + (u64)sidx * kv_dim + kv_off;
        float dot = 0.0f;
#pragma unroll
        for (int c = 0; c < 8; c++) {
            int d = lane + 32 * c;
            if (d < hd) dot += qv[c] * kv_ld(kr, d);
        }
        dot = warp_sum(dot);
        float m_new = fmaxf(m, dot);
        float corr = expf(m - m_new), p = expf(dot - m_new);
        l = l * corr + p;
#pragma unroll
        for (int c = 0; c < 8; c++) {
            int d = lane + 32 * c;
            acc[c] = acc[c] * corr + (d < hd ? p * kv_ld(vr, d) : 0.0f);
        }
        m = m_new;
    }
    if (lane == 0) {
        sm_m[warp] = m;
        sm_l[warp] = l;
    }
#pragma unroll
    for (int c = 0; c < 8; c++) {
        int d = lane + 32 * c;
        if (d < hd) sm_acc[warp][d] = acc[c];
    }
    __syncthreads();
    float bm = fmaxf(fmaxf(sm_m[0], sm_m[1]), fmaxf(sm_m[2], sm_m[3]));
    float wt[4], bl = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        wt[i] = bm == NEG_INF ? 0.0f : expf(sm_m[i] - bm);
        bl += wt[i] * sm_l[i];
    }
    float* o = out + (u64)t * out_stride + h * hd;
    if (splits == 1) {
        for (int d = threadIdx.x; d < hd; d += 128) {
            float v = (wt[0] * sm_acc[0][d] + wt[1] * sm_acc[1][d] + wt[2] * sm_acc[2][d] + wt[3] * sm_acc[3][d]) / bl;
            o[d] = v;
            if (q8) q8_block(v, q8, h * hd + d, n_heads * hd);
        }
        return;
    }
    // partial of this split: [m, l, acc[hd]]
    float* pp = part + ((u64)(t * n_heads + h) * splits + sp) * (hd + 2);
    for (int d = threadIdx.x; d < hd; d += 128)
        pp[2 + d] = wt[0] * sm_acc[0][d] + wt[1] * sm_acc[1][d] + wt[2] * sm_acc[2][d] + wt[3] * sm_acc[3][d];
    if (threadIdx.x == 0) {
        pp[0] = bm;
        pp[1] = bl;
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&counters[t * n_heads + h], 1u) == (u32)(splits - 1);
    __syncthreads();
    if (!last) return;
    __threadfence();
    const float* p0 = part + (u64)(t * n_heads + h) * splits * (hd + 2);
    float gm = NEG_INF;
    for (int i = 0; i < splits; i++) gm = fmaxf(gm, __ldcg(p0 + i * (hd + 2)));
    float gl = 0.0f;
    for (int i = 0; i < splits; i++) {
        float mi = __ldcg(p0 + i * (hd + 2));
        if (mi != NEG_INF) gl += expf(mi - gm) * __ldcg(p0 + i * (hd + 2) + 1);
    }
    for (int d = threadIdx.x; d < hd; d += 128) {
        float a = 0.0f;
        for (int i = 0; i < splits; i++) {
            float mi = __ldcg(p0 + i * (hd + 2));
            if (mi != NEG_INF) a += expf(mi - gm) * __ldcg(p0 + i * (hd + 2) + 2 + d);
        }
        o[d] = a / gl;
        if (q8) q8_block(a / gl, q8, h * hd + d, n_heads * hd);
    }
    if (threadIdx.x == 0) counters[t * n_heads + h] = 0;
}
extern "C" __global__ void __launch_bounds__(128) attention(const float* q, const float* kc, const float* vc, float* out,
                                                            float* part, u32* counters, const u32* pos, int n_heads,
                                                            int n_kv_heads, int hd, int q_stride, int kv_dim,
                                                            int out_stride, float scale, int splits, u8* q8) {
    attention_t(q, kc, vc, out, part, counters, pos, n_heads, n_kv_heads, hd, q_stride, kv_dim, out_stride, scale,
                splits, q8);
}
extern "C" __global__ void __launch_bounds__(128) attention_f16(const float* q, const u16* kc, const u16* vc, float* out,
                                                                float* part, u32* counters, const u32* pos, int n_heads,
                                                                int n_kv_heads, int hd, int q_stride, int kv_dim,
                                                                int out_stride, float scale, int splits, u8* q8) {
    attention_t(q, kc, vc, out, part, counters, pos, n_heads, n_kv_heads, hd, q_stride, kv_dim, out_stride, scale,
                splits, q8);
}

// ---------------------------------------------------------------------------------------
// Elementwise and reductions

// gate[i] = silu(gate[i]) · up[i] = gate[i] / (1 + e^(−gate[i])) · up[i], i < len.
extern "C" __global__ void silu_mul(float* gate, const float* up, int len) {
    int i = blockIdx.x * 256 + threadIdx.x;
    if (i < len) {
        float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

// x[i] += y[i], i < len.
extern "C" __global__ void add(float* x, const float* y, int len) {
    int i = blockIdx.x * 256 + threadIdx.x;
    if (i < len) x[i] += y[i];
}

// out[t, i] = x[t * x_stride + perm[i]], t < n, i < cols: x in a GPTQ matrix's column order.
extern "C" __global__ void gather(const u32* perm, const float* x, float* out, int n, int cols, int x_stride) {
    int e = blockIdx.x * 256 + threadIdx.x;
    if (e >= n * cols) return;
    int t = e / cols, i = e % cols;
    out[e] = x[(u64)t * x_stride + perm[i]];
}

// result[0] = the smallest i maximising x[row, i], i < cols. One block of 1024 threads.
extern "C" __global__ void __launch_bounds__(1024) argmax(const float* x, u32* result, int cols, int row) {
    __shared__ float bv_s[32];
    __shared__ u32 bi_s[32];
    const float* xr = x + (u64)row * cols;
    float bv = NEG_INF;
    u32 bi = 0xffffffffu;
    for (int i = threadIdx.x; i < cols; i += 1024) {
        float v = xr[i];
        if (v > bv) {
            bv = v;
            bi = i;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        u32 oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) {
            bv = ov;
            bi = oi;
        }
    }
    if ((threadIdx.x & 31) == 0) {
        bv_s[threadIdx.x >> 5] = bv;
        bi_s[threadIdx.x >> 5] = bi;
    }
    __syncthreads();
    if (threadIdx.x < 32) {
        bv = bv_s[threadIdx.x];
        bi = bi_s[threadIdx.x];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            u32 oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (ov > bv || (ov == bv && oi < bi)) {
                bv = ov;
                bi = oi;
            }
        }
        if (threadIdx.x == 0) result[0] = bi == 0xffffffffu ? 0u : bi;
    }
}
