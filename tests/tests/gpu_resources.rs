//! A long chat must not grow GPU memory: the wgpu backend's live buffers and bind groups
//! stay flat over thousands of decoded tokens (read one at a time, and decoded ahead of the
//! host) and over sessions that come and go.
//! (Before the fix each token left an ids buffer and a bind group behind, and a dropped
//! session's KV cache stayed alive in the bind-group cache.)

use safetensors::Dtype;
use yangtuo::backend::Backend;
use yangtuo::backend::wgpu::Wgpu;
use yangtuo::model::Model;
use yangtuo::weights::source::ModelFiles;
use yangtuo_tests::Spec;

const TOKENS: usize = 2000;
const WARM: usize = 300;

#[test]
fn wgpu_resources_stay_flat_over_a_long_decode_and_many_sessions() {
    let spec = Spec {
        hidden: 64,
        intermediate: 128,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        vocab: 300,
        dtype: Dtype::F16,
        seed: 11,
        ..Spec::default()
    };
    let dir = spec.write_temp("gpu-resources");
    let gpu = pollster::block_on(Wgpu::with_f16(false)).unwrap();
    let model = Model::load(&mut ModelFiles::open(&dir).unwrap(), gpu, 0, &mut |_| {}).unwrap();
    let _ = std::fs::remove_dir_all(dir);
    let b = &model.backend;

    // Warm up: every kernel compiled, every scratch buffer at its size, every bind group
    // made (past 256 positions decode attention splits the keys, with a scratch of its own).
    let mut s = model.new_state(TOKENS + 16, 8, 1).unwrap();
    model.forward(&mut s, &[1, 2, 3, 4, 5], 0, 1).unwrap();
    let mut next = pollster::block_on(b.argmax(&s.scratch.logits, 0)).unwrap();
    let mut pos = 5;
    for _ in 0..WARM {
        model.forward(&mut s, &[next], pos, 1).unwrap();
        next = pollster::block_on(b.argmax(&s.scratch.logits, 0)).unwrap();
        pos += 1;
    }
    // and greedy decode ahead of the host (the token's forward recorded before it is read)
    model.forward(&mut s, &[next], pos, 1).unwrap();
    pos += 1;
    for _ in 0..3 {
        next = pollster::block_on(model.forward_ahead(&mut s, pos).unwrap()).unwrap();
        pos += 1;
    }
    let before = b
        .live_objects()
        .expect("wgpu-core reports its objects natively");

    for t in WARM..TOKENS {
        if t % 2 == 0 {
            model.forward(&mut s, &[next], pos, 1).unwrap();
            next = pollster::block_on(b.argmax(&s.scratch.logits, 0)).unwrap();
        } else {
            // `next` again, picked and run at `pos` on the device
            let read = model.forward_ahead(&mut s, pos).unwrap();
            assert_eq!(pollster::block_on(read).unwrap(), next);
            next = pollster::block_on(b.argmax(&s.scratch.logits, 0)).unwrap();
        }
        pos += 1;
    }
    let after_decode = b.live_objects().unwrap();
    assert_eq!(
        after_decode, before,
        "{TOKENS} decoded tokens changed the live (buffers, bind groups)"
    );

    // Sessions that come and go (a server's requests) give their buffers back.
    for i in 0..20u32 {
        let mut t = model.new_state(64, 8, 1).unwrap();
        model.forward(&mut t, &[7, 8, 9 + i], 0, 1).unwrap();
        pollster::block_on(b.argmax(&t.scratch.logits, 0)).unwrap();
    }
    // One more readback, so the last session's recorded work is submitted and released.
    model.forward(&mut s, &[next], pos, 1).unwrap();
    pollster::block_on(b.argmax(&s.scratch.logits, 0)).unwrap();
    assert_eq!(
        b.live_objects().unwrap(),
        before,
        "20 dropped sessions left (buffers, bind groups) alive"
    );
}
