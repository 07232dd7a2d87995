//! What the scheduler and its callers wait on, per target. Natively the scheduler is a
//! thread and each caller a thread that waits on its events with a timeout (to look at its
//! cancel flag). In the browser everything shares one thread: the scheduler is a task on
//! the page's event loop and callers await their events, waking on a timer for the same
//! look at the flag.

use std::time::Duration;

/// Jobs go to the scheduler through a channel it awaits (blocking its own thread natively).
pub use futures_channel::mpsc::{
    UnboundedReceiver as JobRx, UnboundedSender as JobTx, unbounded as jobs,
};

/// What a caller's wait for its next event gave.
pub enum Next<T> {
    Event(T),
    /// Nothing within the timeout.
    Nothing,
    /// The scheduler dropped the sender (it stopped).
    Gone,
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::Next;
    use std::sync::mpsc::{self, RecvTimeoutError};
    use std::time::Duration;

    pub struct EventTx<T>(mpsc::Sender<T>);
    pub struct EventRx<T>(mpsc::Receiver<T>);

    pub fn events<T>() -> (EventTx<T>, EventRx<T>) {
        let (tx, rx) = mpsc::channel();
        (EventTx(tx), EventRx(rx))
    }

    impl<T> EventTx<T> {
        /// False once the caller is gone.
        pub fn send(&self, event: T) -> bool {
            self.0.send(event).is_ok()
        }
    }

    impl<T> EventRx<T> {
        pub async fn next(&mut self, timeout: Duration) -> Next<T> {
            match self.0.recv_timeout(timeout) {
                Ok(e) => Next::Event(e),
                Err(RecvTimeoutError::Timeout) => Next::Nothing,
                Err(RecvTimeoutError::Disconnected) => Next::Gone,
            }
        }
    }
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::Next;
    use futures_channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Poll;
    use std::time::Duration;

    pub struct EventTx<T>(UnboundedSender<T>);
    pub struct EventRx<T>(UnboundedReceiver<T>);

    pub fn events<T>() -> (EventTx<T>, EventRx<T>) {
        let (tx, rx) = unbounded();
        (EventTx(tx), EventRx(rx))
    }

    impl<T> EventTx<T> {
        /// False once the caller is gone.
        pub fn send(&self, event: T) -> bool {
            self.0.unbounded_send(event).is_ok()
        }
    }

    impl<T> EventRx<T> {
        pub async fn next(&mut self, timeout: Duration) -> Next<T> {
            let mut timer = Box::pin(crate::event_loop::sleep(timeout.as_millis() as u32));
            let mut event = self.0.recv();
            std::future::poll_fn(|cx| {
                if let Poll::Ready(e) = Pin::new(&mut event).poll(cx) {
                    return Poll::Ready(e.map_or(Next::Gone, Next::Event));
                }
                timer.as_mut().poll(cx).map(|()| Next::Nothing)
            })
            .await
        }
    }
}

pub use imp::{EventTx, events};

/// How often a waiting caller looks at its cancel flag.
pub const CANCEL_POLL: Duration = Duration::from_millis(20);
