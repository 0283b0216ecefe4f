//! Acknowledgements flowing back from the sink to the source: a source may move its position past
//! a unit of input (a content blob) only when every row taken from it is safe downstream,
//! delivered, dead-lettered or written to the refused-input file.
//!
//! Acknowledging is explicit. A dropped `Ack` (a delivery abandoned at shutdown, a crashed task)
//! never counts as done, so a lost row can't move a position forward.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

type OnComplete = Box<dyn FnOnce() + Send>;

struct Inner {
    outstanding: AtomicUsize,
    on_complete: Mutex<Option<OnComplete>>,
}

/// One outstanding piece of a unit: the unit's own hold, or one of its rows.
pub struct Ack(Arc<Inner>);

impl Ack {
    /// The hold on a new unit. Rows taken from the unit get [`Ack::attach`]ed handles; releasing
    /// the hold with [`Ack::ack`] once the unit is fully read lets `on_complete` run when the last
    /// of them is acknowledged.
    pub fn hold(on_complete: impl FnOnce() + Send + 'static) -> Self {
        Self(Arc::new(Inner {
            outstanding: AtomicUsize::new(1),
            on_complete: Mutex::new(Some(Box::new(on_complete))),
        }))
    }

    /// A handle for one more piece (a row) of the same unit.
    pub fn attach(&self) -> Self {
        self.0.outstanding.fetch_add(1, Ordering::AcqRel);
        Self(self.0.clone())
    }

    /// This piece is safe downstream.
    pub fn ack(self) {
        if self.0.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            let done = self.0.on_complete.lock().ok().and_then(|mut f| f.take());
            if let Some(done) = done {
                done();
            }
        }
    }
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ack")
            .field("outstanding", &self.0.outstanding.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn completes_once_after_the_hold_and_every_row() {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let hold = Ack::hold(move || assert!(!flag.swap(true, Ordering::SeqCst)));
        let rows: Vec<Ack> = (0..3).map(|_| hold.attach()).collect();
        let mut rows = rows.into_iter();
        rows.next().unwrap().ack();
        hold.ack();
        assert!(!done.load(Ordering::SeqCst), "two rows still out");
        rows.next().unwrap().ack();
        rows.next().unwrap().ack();
        assert!(done.load(Ordering::SeqCst));
    }

    #[test]
    fn a_dropped_row_never_completes_the_unit() {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let hold = Ack::hold(move || flag.store(true, Ordering::SeqCst));
        let row = hold.attach();
        hold.ack();
        drop(row);
        assert!(!done.load(Ordering::SeqCst));
    }
}
