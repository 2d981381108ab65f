//! Bounds on what clients can make authgate hold: bytes of request bodies
//! and messages not yet decided on, per connection and in all.
//!
//! A body's bytes are charged as they arrive, before they are buffered, and
//! given back when the request is done with them. A charge never waits:
//! when a budget is spent, the request is refused at once (gRPC
//! `RESOURCE_EXHAUSTED`, HTTP 503), so a client that withholds the end of
//! its messages cannot make others queue behind it. A budget is one atomic
//! counter (no lock on the Check path). docs/security.md ("Resource
//! limits") lists the budgets.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A number of bytes that may be held at once.
#[derive(Clone, Debug)]
pub struct ByteBudget(Arc<AtomicUsize>);

impl ByteBudget {
    pub fn new(bytes: usize) -> Self {
        ByteBudget(Arc::new(AtomicUsize::new(bytes)))
    }

    /// Bytes not charged at the moment.
    pub fn available(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    fn take(&self, n: usize) -> Result<(), Exhausted> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                left.checked_sub(n)
            })
            .map(|_| ())
            .map_err(|_| Exhausted)
    }

    fn give(&self, n: usize) {
        if n > 0 {
            self.0.fetch_add(n, Ordering::AcqRel);
        }
    }
}

/// The budget was spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted;

/// What one request holds of a connection's budget and of the shared one;
/// given back when dropped.
#[derive(Debug)]
pub struct Charge {
    connection: ByteBudget,
    shared: ByteBudget,
    held: usize,
}

impl Charge {
    /// An empty charge against a connection's budget and the shared one.
    pub fn new(connection: &ByteBudget, shared: &ByteBudget) -> Self {
        Charge {
            connection: connection.clone(),
            shared: shared.clone(),
            held: 0,
        }
    }

    /// Takes `n` more bytes from both budgets, or none.
    pub fn take(&mut self, n: usize) -> Result<(), Exhausted> {
        if n == 0 {
            return Ok(());
        }
        self.connection.take(n)?;
        if let Err(e) = self.shared.take(n) {
            self.connection.give(n);
            return Err(e);
        }
        self.held += n;
        Ok(())
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.held
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.connection.give(self.held);
        self.shared.give(self.held);
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
        assert_eq!((conn.available(), shared.available()), (100, 150));
    }

    #[test]
    fn concurrent_charges_never_overdraw() {
        let conn = ByteBudget::new(1_000);
        let shared = ByteBudget::new(1_000);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        let mut c = Charge::new(&conn, &shared);
                        if c.take(300).is_ok() {
                            assert!(conn.available() <= 700);
                        }
                    }
                });
            }
        });
        assert_eq!((conn.available(), shared.available()), (1_000, 1_000));
    }
}
