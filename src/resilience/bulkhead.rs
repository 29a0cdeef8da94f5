//! Bulkhead: at most N calls in flight per agent; the next one fails fast.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Bulkhead {
    permits: Arc<Semaphore>,
    max: u32,
}

impl Bulkhead {
    pub fn new(max: u32) -> Self {
        Bulkhead {
            permits: Arc::new(Semaphore::new(max as usize)),
            max,
        }
    }

    /// A slot, or `None` when the agent already has `max` calls in flight.
    pub fn try_enter(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    pub fn in_flight(&self) -> u32 {
        self.max - self.permits.available_permits() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_after_the_last_fails_fast_and_frees_on_drop() {
        let b = Bulkhead::new(2);
        let one = b.try_enter().unwrap();
        let _two = b.try_enter().unwrap();
        assert!(b.try_enter().is_none());
        assert_eq!(b.in_flight(), 2);
        drop(one);
        assert!(b.try_enter().is_some());
    }
}
