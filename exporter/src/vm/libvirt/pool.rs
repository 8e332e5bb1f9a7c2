//! libvirt's client calls block their thread until libvirtd answers (and libvirtd may wait on a
//! QEMU that does not answer). They run here, off the async runtime, on at most
//! `--libvirt.max-concurrent-calls` threads at once: a scrape waits for a slot and for the answer
//! only until its deadline; a call that outlives it keeps its slot until libvirt returns, so a
//! hung libvirtd or QEMU can take at most that many threads, never the runtime.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::time::{timeout_at, Instant};

/// Why a pooled call gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// Every slot was busy (with calls that have not returned) until the deadline.
    #[error("no free libvirt call slot before the scrape deadline (earlier calls still blocked)")]
    Busy,
    /// The call did not return by the deadline; it goes on in the background.
    #[error("libvirt did not answer before the scrape deadline")]
    Timeout,
    /// The call's thread panicked.
    #[error("the libvirt call's thread failed")]
    Panicked,
}

/// A bounded set of threads for blocking libvirt calls.
#[derive(Debug, Clone)]
pub struct Pool {
    slots: Arc<Semaphore>,
}

impl Pool {
    /// A pool of `size` concurrent calls (at least 1).
    pub fn new(size: usize) -> Self {
        Pool {
            slots: Arc::new(Semaphore::new(size.max(1))),
        }
    }

    /// Runs `f` on a blocking thread once a slot is free, waiting until `deadline` at most.
    pub async fn run<T, F>(&self, deadline: Instant, f: F) -> Result<T, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let permit = match timeout_at(deadline, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => return Err(PoolError::Busy),
        };
        let handle = tokio::task::spawn_blocking(move || {
            let _slot = permit;
            f()
        });
        match timeout_at(deadline, handle).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(PoolError::Panicked),
            Err(_) => Err(PoolError::Timeout),
        }
    }

    /// Calls now running (or blocked).
    pub fn busy(&self, size: usize) -> usize {
        size.saturating_sub(self.slots.available_permits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_blocked_call_holds_its_slot_and_others_time_out() {
        let pool = Pool::new(1);
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let soon = Instant::now() + Duration::from_millis(100);
        let r = pool.run(soon, move || rx.recv().ok()).await;
        assert_eq!(r, Err(PoolError::Timeout));
        assert_eq!(pool.busy(1), 1);
        let r = pool
            .run(Instant::now() + Duration::from_millis(50), || 1)
            .await;
        assert_eq!(r, Err(PoolError::Busy));
        tx.send(()).unwrap();
        let r = pool
            .run(Instant::now() + Duration::from_secs(5), || 2)
            .await;
        assert_eq!(r, Ok(2));
    }
}
