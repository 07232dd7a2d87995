//! Backend-erased access to a loaded model, so the chat layer and the bindings work with
//! any device chosen at run time.

use crate::backend::profile::Profile;
use crate::backend::{Backend, KvDtype};
use crate::model::{Model, Rows, State};
use crate::{Config, Error, Result};
use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

pub type LocalFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// One session's device state (scratch and KV cache), opaque to callers.
pub struct SessionState {
    inner: Box<dyn Any + Send + Sync>,
    pub ctx_len: usize,
    pub logit_rows: usize,
    /// Made with others by `new_states`: its KV cache sits beside theirs where the device
    /// places caches so (one attention dispatch for all of them in a batch).
    pub side_by_side: bool,
}

/// A model on some backend. `forward` only queues work; `argmax` and `logits` wait for it.
pub trait Runner: Send + Sync {
    fn config(&self) -> &Config;
    fn device(&self) -> String;
    /// Whether the model runs on the CPU backend (the batch scheduler's prompt chunks are
    /// smaller there: a CPU computes a prompt token about as slowly as a decode step's).
    fn on_cpu(&self) -> bool;
    /// How sessions' KV caches store keys and values.
    fn kv_dtype(&self) -> KvDtype;
    /// `Backend::decode_sums_as_prompt` of the model's device.
    fn decode_sums_as_prompt(&self) -> bool;
    fn new_state(
        &self,
        ctx_len: usize,
        max_batch: usize,
        logit_rows: usize,
    ) -> Result<SessionState> {
        let mut states = self.new_states(1, ctx_len, max_batch, logit_rows)?;
        Ok(states.pop().expect("one state was made"))
    }
    /// `count` states whose KV caches sit side by side where the device runs a batch's
    /// attention in one dispatch for them (`Model::new_states`): what a batch's pool holds.
    fn new_states(
        &self,
        count: usize,
        ctx_len: usize,
        max_batch: usize,
        logit_rows: usize,
    ) -> Result<Vec<SessionState>>;
    fn forward(
        &self,
        s: &mut SessionState,
        tokens: &[u32],
        pos: usize,
        rows_out: usize,
    ) -> Result<()>;
    /// One forward of several sessions' tokens (`(session, tokens, pos)`) as one batch, in
    /// the activations of `batch` (a state made with `ctx_len` 0), where the logits of the
    /// batch's last `rows_out` rows land (`Model::forward_batch`).
    fn forward_batch(
        &self,
        batch: &mut SessionState,
        seqs: &mut [(&mut SessionState, &[u32], usize)],
        rows_out: usize,
    ) -> Result<()>;
    /// Copy the keys and values at `positions` of `src` into `dst`: a prefix another
    /// sequence already computed.
    fn copy_prefix(
        &self,
        src: &SessionState,
        dst: &mut SessionState,
        positions: std::ops::Range<usize>,
    ) -> Result<()>;
    fn argmax<'a>(&'a self, s: &'a SessionState, row: usize) -> LocalFuture<'a, Result<u32>>;
    /// Greedy decode ahead of the host (`Model::forward_ahead`): the argmax of the last
    /// logits row is the next token, and its forward at `pos` is recorded before the future
    /// gives it back. `None` where the device cannot: then `argmax`, then `forward`.
    fn forward_ahead<'a>(
        &'a self,
        s: &mut SessionState,
        pos: usize,
    ) -> Option<LocalFuture<'a, Result<u32>>>;
    fn logits<'a>(&'a self, s: &'a SessionState, rows: usize) -> LocalFuture<'a, Result<Vec<f32>>>;
    /// `Backend::set_profiling` of the model's device.
    fn set_profiling(&self, on: bool) -> bool;
    /// `Backend::take_profile` of the model's device.
    fn take_profile(&self) -> Profile;
}

/// A model plus the lock that keeps two sessions' work from interleaving on its device
/// (made by `Model::into_runner`).
pub(crate) struct Locked<B: Backend> {
    model: Model<B>,
    exec: Mutex<()>,
}

impl<B: Backend> Locked<B> {
    pub(crate) fn new(model: Model<B>) -> Self {
        Locked {
            model,
            exec: Mutex::new(()),
        }
    }
}

fn state<B: Backend>(s: &SessionState) -> Result<&State<B>> {
    s.inner
        .downcast_ref()
        .ok_or_else(|| Error::arg("session", "this session belongs to another model"))
}

fn state_mut<B: Backend>(s: &mut SessionState) -> Result<&mut State<B>> {
    s.inner
        .downcast_mut()
        .ok_or_else(|| Error::arg("session", "this session belongs to another model"))
}

impl<B: Backend> Runner for Locked<B> {
    fn config(&self) -> &Config {
        &self.model.config
    }

    fn device(&self) -> String {
        self.model.backend.name()
    }

    fn on_cpu(&self) -> bool {
        #[cfg(feature = "cpu")]
        return std::any::TypeId::of::<B>() == std::any::TypeId::of::<crate::backend::cpu::Cpu>();
        #[cfg(not(feature = "cpu"))]
        false
    }

    fn kv_dtype(&self) -> KvDtype {
        self.model.kv_dtype
    }

    fn decode_sums_as_prompt(&self) -> bool {
        self.model.backend.decode_sums_as_prompt()
    }

    fn new_states(
        &self,
        count: usize,
        ctx_len: usize,
        max_batch: usize,
        logit_rows: usize,
    ) -> Result<Vec<SessionState>> {
        let states = self
            .model
            .new_states(count, ctx_len, max_batch, logit_rows)?;
        Ok(states
            .into_iter()
            .map(|st| {
                let logit_rows = st.scratch.logit_rows;
                SessionState {
                    inner: Box::new(st),
                    ctx_len,
                    logit_rows,
                    side_by_side: count > 1,
                }
            })
            .collect())
    }

    fn forward(
        &self,
        s: &mut SessionState,
        tokens: &[u32],
        pos: usize,
        rows_out: usize,
    ) -> Result<()> {
        let st = state_mut::<B>(s)?;
        let _g = self.exec.lock().unwrap_or_else(|p| p.into_inner());
        self.model.forward(st, tokens, pos, rows_out)
    }

    fn forward_batch(
        &self,
        batch: &mut SessionState,
        seqs: &mut [(&mut SessionState, &[u32], usize)],
        rows_out: usize,
    ) -> Result<()> {
        let scratch = &mut state_mut::<B>(batch)?.scratch;
        let mut rows = Vec::with_capacity(seqs.len());
        for (s, tokens, pos) in seqs.iter_mut() {
            rows.push(Rows {
                kv: &mut state_mut::<B>(s)?.kv,
                tokens,
                pos: *pos,
            });
        }
        let _g = self.exec.lock().unwrap_or_else(|p| p.into_inner());
        self.model.forward_batch(scratch, &mut rows, rows_out)
    }

    fn copy_prefix(
        &self,
        src: &SessionState,
        dst: &mut SessionState,
        positions: std::ops::Range<usize>,
    ) -> Result<()> {
        let src = &state::<B>(src)?.kv;
        let dst = &mut state_mut::<B>(dst)?.kv;
        if positions.end > src.ctx_len.min(dst.ctx_len) {
            return Err(Error::Device(format!(
                "cannot copy positions {positions:?} between caches of {} and {}",
                src.ctx_len, dst.ctx_len
            )));
        }
        let _g = self.exec.lock().unwrap_or_else(|p| p.into_inner());
        dst.copy_from(&self.model.backend, src, positions);
        Ok(())
    }

    fn argmax<'a>(&'a self, s: &'a SessionState, row: usize) -> LocalFuture<'a, Result<u32>> {
        Box::pin(async move {
            let st = state::<B>(s)?;
            let _g = self.exec.lock().unwrap_or_else(|p| p.into_inner());
            self.model.backend.argmax(&st.scratch.logits, row).await
        })
    }

    fn forward_ahead<'a>(
        &'a self,
        s: &mut SessionState,
        pos: usize,
    ) -> Option<LocalFuture<'a, Result<u32>>> {
        let st = state_mut::<B>(s).ok()?;
        let read = {
            let _g = self.exec.lock().unwrap_or_else(|p| p.into_inner());
            self.model.forward_ahead(st, pos)?
        };
        Some(Box::pin(async move {
            let _g = self.exec.lock().unwrap_or_else(|p| p.into_inner());
            read.await
        }))
    }

    fn logits<'a>(&'a self, s: &'a SessionState, rows: usize) -> LocalFuture<'a, Result<Vec<f32>>> {
        Box::pin(async move {
            let st = state::<B>(s)?;
            let _g = self.exec.lock().unwrap_or_else(|p| p.into_inner());
            self.model.backend.read(&st.scratch.logits, rows).await
        })
    }

    fn set_profiling(&self, on: bool) -> bool {
        let _g = self.exec.lock().unwrap_or_else(|p| p.into_inner());
        self.model.backend.set_profiling(on)
    }

    fn take_profile(&self) -> Profile {
        let _g = self.exec.lock().unwrap_or_else(|p| p.into_inner());
        self.model.backend.take_profile()
    }
}
