//! A core call on its own thread. The calling Python thread waits for its messages in short
//! timeouts with the GIL released, and checks for signals between waits: on Ctrl-C it sets
//! core's cancel flag, waits for the worker to end (within one token), and re-raises.

use crate::errors::{panic_message, panicked, to_py};
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;
use yangtuo::Flow;

/// How often a waiting thread looks for signals.
const TICK: Duration = Duration::from_millis(20);

pub enum Msg<T> {
    /// A piece of answer text (streaming only).
    Text(String),
    /// Load progress: bytes done, bytes in all, the tensor just loaded.
    Progress(u64, u64, String),
    /// The call's result; the last message.
    Done(yangtuo::Result<T>),
    /// The call panicked; the last message.
    Panicked(String),
}

pub struct Worker<T> {
    /// `None` once closed: the worker's next `Text` then fails to send, and it stops.
    rx: Mutex<Option<Receiver<Msg<T>>>>,
    cancel: Arc<AtomicBool>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T: Send + 'static> Worker<T> {
    /// Run `job(sender, cancel_flag)` on a new thread; its result (or panic) is the last message.
    pub fn spawn(
        job: impl FnOnce(&Sender<Msg<T>>, &AtomicBool) -> yangtuo::Result<T> + Send + 'static,
    ) -> PyResult<Self> {
        let (tx, rx) = mpsc::channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let handle = std::thread::Builder::new()
            .name("yangtuo-worker".into())
            .spawn(move || {
                let last = match catch_unwind(AssertUnwindSafe(|| job(&tx, &flag))) {
                    Ok(r) => Msg::Done(r),
                    Err(p) => Msg::Panicked(panic_message(p)),
                };
                let _ = tx.send(last);
            })
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start a worker thread: {e}")))?;
        Ok(Worker {
            rx: Mutex::new(Some(rx)),
            cancel,
            handle: Mutex::new(Some(handle)),
        })
    }

    fn recv(&self, py: Python<'_>) -> Result<Msg<T>, RecvTimeoutError> {
        py.detach(|| match lock(&self.rx).as_ref() {
            Some(rx) => rx.recv_timeout(TICK),
            None => Err(RecvTimeoutError::Disconnected),
        })
    }

    /// The next message, or `None` when the worker is gone. A signal's exception (Ctrl-C's
    /// `KeyboardInterrupt`) is returned as is; the worker keeps running (see `next_or_cancel`).
    pub fn next(&self, py: Python<'_>) -> PyResult<Option<Msg<T>>> {
        loop {
            match self.recv(py) {
                Ok(m) => return Ok(Some(m)),
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
                Err(RecvTimeoutError::Timeout) => py.check_signals()?,
            }
        }
    }

    /// `next`, but a signal cancels the generation and waits for the worker first.
    pub fn next_or_cancel(&self, py: Python<'_>) -> PyResult<Option<Msg<T>>> {
        self.next(py).inspect_err(|_| self.cancel(py))
    }

    /// The call's result, skipping other messages; cancelled on a signal.
    pub fn wait(&self, py: Python<'_>) -> PyResult<T> {
        loop {
            match self.next_or_cancel(py)? {
                Some(Msg::Done(r)) => return r.map_err(|e| to_py(py, e)),
                Some(Msg::Panicked(m)) => return Err(panicked(py, &m)),
                Some(_) => {}
                None => return Err(panicked(py, "the worker thread ended without a result")),
            }
        }
    }

    /// Set the cancel flag and wait (GIL released) until the worker ends; a second signal
    /// stops the wait, leaving the worker to finish on its own.
    pub fn cancel(&self, py: Python<'_>) {
        self.cancel.store(true, Ordering::Relaxed);
        self.join(py);
        // its last message is `Cancelled`, already raised as the signal's exception
        lock(&self.rx).take();
    }

    /// Stop reading: the worker stops at its next piece of text. Waits for it to end.
    pub fn close(&self, py: Python<'_>) {
        lock(&self.rx).take();
        self.join(py);
    }

    fn join(&self, py: Python<'_>) {
        loop {
            let finished = py.detach(|| {
                let mut h = lock(&self.handle);
                match h.as_ref() {
                    Some(t) if !t.is_finished() => {
                        drop(h);
                        std::thread::sleep(TICK);
                        false
                    }
                    _ => {
                        if let Some(t) = h.take() {
                            let _ = t.join();
                        }
                        true
                    }
                }
            });
            if finished || py.check_signals().is_err() {
                return;
            }
        }
    }
}

/// The `on_text` callback of a worker: forwards text when streaming; once the reader is
/// gone (the stream was closed or dropped) it asks core to stop.
pub fn text_sink<T>(tx: &Sender<Msg<T>>, stream: bool) -> impl FnMut(&str) -> Flow + '_ {
    move |t: &str| {
        if !stream || tx.send(Msg::Text(t.to_string())).is_ok() {
            Flow::Continue
        } else {
            Flow::Stop
        }
    }
}

/// A streaming worker whose first message was read at the call, so that a bad request
/// raises there and not at the first `next()`; the streams (`TextStream`, `ChunkStream`)
/// read through it.
pub struct Started<T> {
    pub worker: Worker<T>,
    pending: Mutex<Option<Msg<T>>>,
}

impl<T: Send + 'static> Started<T> {
    pub fn start(py: Python<'_>, worker: Worker<T>) -> PyResult<Started<T>> {
        let first = match worker.next_or_cancel(py)? {
            Some(Msg::Done(Err(e))) => return Err(to_py(py, e)),
            Some(Msg::Panicked(m)) => return Err(panicked(py, &m)),
            other => other,
        };
        Ok(Started {
            worker,
            pending: Mutex::new(first),
        })
    }

    /// The message read at the start, then the worker's next ones (cancelled on a signal).
    pub fn next(&self, py: Python<'_>) -> PyResult<Option<Msg<T>>> {
        match lock(&self.pending).take() {
            Some(m) => Ok(Some(m)),
            None => self.worker.next_or_cancel(py),
        }
    }
}
