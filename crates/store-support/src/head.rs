//! The log head a store publishes: the highest committed global position, in a
//! [`tokio::sync::watch`] channel that the store's writer (and, on PostgreSQL, the `LISTEN` task
//! that hears other processes' commits) raises, and that subscribers wait on.

use std::time::Duration;

use tokio::sync::watch;

/// The publishing side (the writer's).
pub type HeadSender = watch::Sender<u64>;

/// The waiting side (cheap to clone).
pub type HeadReceiver = watch::Receiver<u64>;

/// A head channel starting at `position` (the head found when the store opened).
pub fn channel(position: u64) -> (HeadSender, HeadReceiver) {
    watch::channel(position)
}

/// Raises the published head to `position` if it is higher (a head never moves back, though
/// commits may be reported out of order); wakes the waiters only then. Returns whether it moved.
pub fn advance(head: &HeadSender, position: u64) -> bool {
    head.send_if_modified(|h| {
        let moved = position > *h;
        *h = (*h).max(position);
        moved
    })
}

/// Waits until the published head passes `after_position`, or `poll` has passed (so appends by
/// other processes, which this channel may not hear, are seen by the caller's re-read). This is
/// `EventStore::wait_for_append` for every backend: a spurious return is allowed.
pub async fn wait_after(head: &HeadReceiver, after_position: u64, poll: Duration) {
    let mut head = head.clone();
    let _ = tokio::time::timeout(poll, head.wait_for(|h| *h > after_position)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_head_only_moves_forward_and_wakes_waiters_when_it_does() {
        let (tx, rx) = channel(5);
        assert!(!advance(&tx, 3), "a lower position does not move the head");
        assert_eq!(*rx.borrow(), 5);
        let waiter = tokio::spawn({
            let rx = rx.clone();
            async move {
                let started = std::time::Instant::now();
                wait_after(&rx, 5, Duration::from_secs(10)).await;
                started.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(advance(&tx, 9));
        let waited = waiter.await.unwrap();
        assert!(
            waited < Duration::from_secs(5),
            "woken by the append, not the poll"
        );
        assert_eq!(*rx.borrow(), 9);
        let started = std::time::Instant::now();
        wait_after(&rx, 9, Duration::from_millis(50)).await;
        assert!(
            started.elapsed() >= Duration::from_millis(50),
            "nothing new: waits for the poll"
        );
    }
}
