//! Periodic background work that ends with its owner.

use std::{
    future::Future,
    sync::{Arc, Weak},
    time::Duration,
};

/// Runs `work` on `owner` every `period` (a missed tick is skipped, not bunched) for as long
/// as the owner lives and `work` answers `true`. The task holds the owner only weakly between
/// ticks, so dropping the owner ends it.
pub fn every<T, F, Fut>(period: Duration, owner: &Arc<T>, work: F)
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>) -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let owner: Weak<T> = Arc::downgrade(owner);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let Some(owner) = owner.upgrade() else { break };
            if !work(owner).await {
                break;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn runs_until_its_owner_is_gone_or_it_says_stop() {
        let owner = Arc::new(AtomicU32::new(0));
        every(Duration::from_secs(1), &owner, |n| async move {
            n.fetch_add(1, Ordering::Relaxed) < 4
        });
        tokio::time::sleep(Duration::from_millis(10_500)).await;
        // Ticks at 0, 1, 2, 3, 4 s; the fifth answered "stop".
        assert_eq!(owner.load(Ordering::Relaxed), 5);

        // Dropping the owner ends it.
        let ticks = Arc::new(AtomicU32::new(0));
        let owner = Arc::new(());
        let counted = Arc::clone(&ticks);
        every(Duration::from_secs(1), &owner, move |_| {
            let counted = Arc::clone(&counted);
            async move {
                counted.fetch_add(1, Ordering::Relaxed);
                true
            }
        });
        tokio::time::sleep(Duration::from_millis(2_500)).await;
        assert_eq!(ticks.load(Ordering::Relaxed), 3);
        drop(owner);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(ticks.load(Ordering::Relaxed), 3);
    }
}
