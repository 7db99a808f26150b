//! How long-running library calls report progress and notices: as [`Event`]s to an [`Observer`]
//! that the caller renders (the CLI as progress bars and lines on stderr; an embedding program
//! or a test as it likes). The library itself never prints.

use std::sync::Arc;

/// Something a running task reports.
#[derive(Clone, Debug, PartialEq)]
pub enum Event<'a> {
    /// A task of `total` units (`unit`: "images", "it") begins with `done` of them already done
    /// (a resumed run); `label` names it ("expert 0 epoch 1/50", "distill").
    Begin {
        /// What runs.
        label: &'a str,
        /// Units in all.
        total: u64,
        /// Units done before this call.
        done: u64,
        /// What a unit is.
        unit: &'static str,
    },
    /// `n` more units are done; `status` is the task's new one-line status, if it changed.
    Advance {
        /// Units done since the last event.
        n: u64,
        /// The current status ("loss 0.4312, lr 0.01012").
        status: Option<&'a str>,
    },
    /// The task's label changes (the next epoch of an expert): its count starts again at zero.
    Relabel(&'a str),
    /// A result line worth keeping (an epoch's loss and accuracy).
    Line(&'a str),
    /// Something the user should know that does not stop the work (a resumed run, a weak label).
    Notice(&'a str),
    /// A warning (a choice the importer made, labels that may mislead).
    Warning(&'a str),
    /// The task ended, successfully or not.
    End,
}

/// Receives the [`Event`]s of a task. Shared between threads of a run, hence `&self`.
pub trait Observer: Send + Sync {
    /// Handles one event.
    fn event(&self, event: Event<'_>);
}

/// An observer shared by the parts of a run.
pub type SharedObserver = Arc<dyn Observer>;

/// Drops every event (library calls that pass no observer).
pub struct Quiet;

impl Observer for Quiet {
    fn event(&self, _: Event<'_>) {}
}

/// The observer that drops every event.
pub fn quiet() -> SharedObserver {
    Arc::new(Quiet)
}
