// KV cache storage as f32, one element per word: the prefix of store_kv.wgsl and
// attention.wgsl on the f32 path (kv_f16.wgsl is the other).
//   element i of a cache is k_cache[i]

alias KvWord = f32;
const KV_PER_WORD: u32 = 1u;

// The word that holds elements (a, b) of a row; b is a's neighbour, unused here.
fn kv_word(a: f32, b: f32) -> KvWord {
    return a;
}

fn k_at(i: u32) -> f32 {
    return k_cache[i];
}

fn v_at(i: u32) -> f32 {
    return v_cache[i];
}
