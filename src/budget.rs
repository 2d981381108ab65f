//! Bounds on what clients can make authgate hold: bytes of request bodies
//! and messages not yet decided on, per connection and in all.
//!
//! A body's bytes are charged as they arrive, before they are buffered, and
//! given back when the request is done with them. A charge never waits:
//! when a budget is spent, the request is refused at once (gRPC
//! `RESOURCE_EXHAUSTED`, HTTP 503), so a client that withholds the end of
//! its messages cannot make others queue behind it. docs/security.md
//! ("Resource limits") lists the budgets.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A number of bytes that may be held at once.
#[derive(Clone, Debug)]
pub struct ByteBudget(Arc<Semaphore>);

impl ByteBudget {
    pub fn new(bytes: usize) -> Self {
        ByteBudget(Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))))
    }

    /// Bytes not charged at the moment.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

/// The budget was spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted;

/// What one request holds of a connection's budget and of the shared one;
/// given back when dropped.
#[derive(Debug)]
pub struct Charge {
    budgets: [ByteBudget; 2],
    held: [Option<OwnedSemaphorePermit>; 2],
}

impl Charge {
    /// An empty charge against a connection's budget and the shared one.
    pub fn new(connection: &ByteBudget, shared: &ByteBudget) -> Self {
        Charge {
            budgets: [connection.clone(), shared.clone()],
            held: [None, None],
        }
    }

    /// Takes `n` more bytes from both budgets, or none.
    pub fn take(&mut self, n: usize) -> Result<(), Exhausted> {
        if n == 0 {
            return Ok(());
        }
        let n = u32::try_from(n).map_err(|_| Exhausted)?;
        let mut taken: [Option<OwnedSemaphorePermit>; 2] = [None, None];
        for (slot, budget) in taken.iter_mut().zip(&self.budgets) {
            // On failure, what was taken here goes back as `taken` drops.
            *slot = Some(
                budget
                    .0
                    .clone()
                    .try_acquire_many_owned(n)
                    .map_err(|_| Exhausted)?,
            );
        }
        for (held, new) in self.held.iter_mut().zip(taken) {
            match (held.as_mut(), new) {
                (Some(h), Some(p)) => h.merge(p),
                (None, p) => *held = p,
                (Some(_), None) => {}
            }
        }
        Ok(())
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.held[0]
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_take_from_both_budgets_or_neither() {
        let conn = ByteBudget::new(100);
        let shared = ByteBudget::new(150);
        let mut a = Charge::new(&conn, &shared);
        a.take(60).unwrap();
        a.take(30).unwrap();
        assert_eq!(a.bytes(), 90);
        assert_eq!((conn.available(), shared.available()), (10, 60));
        // The connection's budget refuses; the shared one is left as it was.
        assert_eq!(a.take(20), Err(Exhausted));
        assert_eq!((conn.available(), shared.available()), (10, 60));
        let other = ByteBudget::new(100);
        let mut b = Charge::new(&other, &shared);
        // The shared budget refuses; the other connection's is left whole.
        assert_eq!(b.take(70), Err(Exhausted));
        assert_eq!(other.available(), 100);
        b.take(60).unwrap();
        drop(a);
        assert_eq!((conn.available(), shared.available()), (100, 90));
        drop(b);
        assert_eq!((other.available(), shared.available()), (100, 150));
        assert_eq!(Charge::new(&conn, &shared).take(usize::MAX), Err(Exhausted));
    }
}
