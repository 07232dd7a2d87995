// KV cache storage as f16, two elements per word: half the memory and the bytes attention
// reads of kv_f32.wgsl. Packed with WGSL's core pack2x16float / unpack2x16float, so a device
// without shader-f16 (a browser's f32 path) stores f16 too; attention still sums in f32.
//   element i of a cache is half (i & 1) of word i / 2 (element 2w in the low half)
// Rows hold kv_dim elements, an even count (head_dim is even), so a row starts on a word.

alias KvWord = u32;
const KV_PER_WORD: u32 = 2u;

fn kv_word(a: f32, b: f32) -> KvWord {
    return pack2x16float(vec2<f32>(a, b));
}

fn k_at(i: u32) -> f32 {
    let w = unpack2x16float(k_cache[i >> 1u]);
    return select(w.x, w.y, (i & 1u) == 1u);
}

fn v_at(i: u32) -> f32 {
    let w = unpack2x16float(v_cache[i >> 1u]);
    return select(w.x, w.y, (i & 1u) == 1u);
}
