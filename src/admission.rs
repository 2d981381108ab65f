//! Admission of work into the pipeline: slots per front door, byte budgets,
//! and the count of work in flight that a drain waits on.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use crate::budget::ByteBudget;
use crate::limits::{
    GRPC_TOTAL_BYTES, HTTP_TOTAL_BODY_BYTES, MAX_CONCURRENT_CEREMONIES, MAX_CONCURRENT_REQUESTS,
    MAX_PENDING_CEREMONIES,
};

/// Which slots a piece of work takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slots {
    Grpc,
    Http,
    Ceremony,
}

/// Slots, budgets and the drain gate shared by the front doors.
pub struct Admission {
    grpc_slots: Semaphore,
    http_slots: Semaphore,
    ceremony_slots: Semaphore,
    /// WebAuthn calls admitted (see [`MAX_PENDING_CEREMONIES`]).
    pub ceremonies_pending: Arc<Semaphore>,
    /// What all gRPC messages and HTTP bodies in progress may hold.
    pub grpc_bytes: ByteBudget,
    pub http_body_bytes: ByteBudget,
    pub gate: Gate,
}

impl Default for Admission {
    fn default() -> Self {
        Admission {
            grpc_slots: Semaphore::new(MAX_CONCURRENT_REQUESTS),
            http_slots: Semaphore::new(MAX_CONCURRENT_REQUESTS),
            ceremony_slots: Semaphore::new(MAX_CONCURRENT_CEREMONIES),
            ceremonies_pending: Arc::new(Semaphore::new(MAX_PENDING_CEREMONIES)),
            grpc_bytes: ByteBudget::new(GRPC_TOTAL_BYTES),
            http_body_bytes: ByteBudget::new(HTTP_TOTAL_BODY_BYTES),
            gate: Gate::default(),
        }
    }
}

impl Admission {
    /// Runs `work` in one of `slots`, within `timeout` (the wait for a slot
    /// included); `None` when the time ran out.
    pub async fn bounded<T>(
        &self,
        slots: Slots,
        timeout: Duration,
        work: impl Future<Output = T>,
    ) -> Option<T> {
        let _inflight = self.gate.enter();
        let slots = match slots {
            Slots::Grpc => &self.grpc_slots,
            Slots::Http => &self.http_slots,
            Slots::Ceremony => &self.ceremony_slots,
        };
        tokio::time::timeout(timeout, async {
            // The semaphores are never closed, so this waits or succeeds.
            let _slot = slots.acquire().await;
            work.await
        })
        .await
        .ok()
    }
}

/// Work in flight, and whether the server drains. A drain waits for the
/// count to reach zero, woken by the last piece of work that leaves.
#[derive(Default)]
pub struct Gate {
    inflight: AtomicUsize,
    draining: AtomicBool,
    idle: Notify,
}

impl Gate {
    /// Counts a piece of work until the returned guard is dropped.
    pub fn enter(&self) -> InFlight<'_> {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        InFlight(self)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Returns once no work is in flight.
    pub async fn idle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            // Registered before the count is read, so a last leave between
            // the read and the wait still wakes this waiter.
            idle.as_mut().enable();
            if self.inflight.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// One piece of work in flight (see [`Gate::enter`]).
pub struct InFlight<'a>(&'a Gate);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.inflight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_waits_for_the_last_piece_of_work() {
        let gate = Arc::new(Gate::default());
        gate.idle().await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let worker = {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _a = gate.enter();
                let _b = gate.enter();
                let _ = rx.await;
            })
        };
        tokio::task::yield_now().await;
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.idle().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "work is still in flight");
        let _ = tx.send(());
        worker.await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken when the last piece of work left")
            .unwrap();
    }
}
