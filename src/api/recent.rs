//! The jobs most recently submitted through this process, for the live page.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::job::JobId;

/// How many jobs the live page lists.
const KEEP: usize = 20;

/// A small ring of (job, owner), newest last. A `std::sync::Mutex`: it is held
/// for a push or a copy, never across an `.await`.
#[derive(Default)]
pub(crate) struct Recent(Mutex<VecDeque<(JobId, Option<Arc<str>>)>>);

impl Recent {
    pub(crate) fn push(&self, id: JobId, owner: Option<Arc<str>>) {
        let mut ring = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back((id, owner));
    }

    /// The ids `owner` may see, newest first.
    pub(crate) fn visible_to(&self, owner: Option<&str>) -> Vec<JobId> {
        let ring = self.0.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter()
            .rev()
            .filter(|(_, o)| o.as_deref() == owner)
            .map(|(id, _)| *id)
            .collect()
    }
}
