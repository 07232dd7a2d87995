// Which cache row each row of a batch goes to and attends over: one entry per row, read by
// store_kv.wgsl, attention.wgsl and attention_combine.wgsl. Several sequences' caches may
// share one buffer (side by side, `Backend::alloc_kv_slots`), each from its own base row, so
// one dispatch serves every sequence of a decode step.
//   row     the row of k and v (store), of q and out (attention) in the batch
//   base    the first cache row of the row's sequence
//   pos     its position: the store writes cache row base + pos; attention reads base ..= base + pos
//   chunk   keys per split of attention
//   splits  1, or several for decode over a long context (merged by attention_combine.wgsl)
//   part    the row's slot in attention's partial results when splits > 1

struct KvRow {
    row: u32,
    base: u32,
    pos: u32,
    chunk: u32,
    splits: u32,
    part: u32,
}
