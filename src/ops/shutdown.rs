//! Stopping on SIGTERM: a flag every stage can check or wait on. Intake stops first; what is in
//! flight gets a deadline (under Kubernetes' 30 s grace period); the rest stays where it is safe
//! (the spool, or unacknowledged at the source) for the next start.

use tokio::sync::watch;

/// Sets the flag.
pub struct Trigger(watch::Sender<bool>);

/// Reads the flag.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// A flag nothing sets (library callers that stop by closing their input).
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(false);
        // Kept alive, so `wait` never returns.
        std::mem::forget(tx);
        Self(rx)
    }

    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Returns once the flag is set.
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }
}

impl std::fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Shutdown").field(&self.is_set()).finish()
    }
}
