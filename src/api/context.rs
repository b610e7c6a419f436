//! The front doors' context: the store, their settings, and the state only
//! the doors keep (Baseten's polling limiter), and this process's activity
//! record, shared with the pool.

use std::sync::Arc;

use super::baseten::{Baseten, BasetenState};
use crate::activity::Recorder;
use crate::context::DoorConfig;
use crate::scaling::Scaling;

/// What every front door answers from; shared by the clones of one service.
pub(crate) struct Doors<St> {
    pub(crate) store: Arc<St>,
    pub(crate) config: DoorConfig,
    /// What this process saw happen, for the live page (shared with the pool).
    pub(crate) activity: Arc<Recorder>,
    /// The Baseten dialect, when it is on.
    pub(crate) baseten: Option<BasetenState>,
    /// The pool's scaling signals, for the queue document.
    pub(crate) scaling: Scaling,
}

impl<St> Doors<St> {
    pub(crate) fn new(
        store: Arc<St>,
        config: DoorConfig,
        baseten: Option<Baseten>,
        scaling: Scaling,
        activity: Arc<Recorder>,
    ) -> Self {
        Doors {
            store,
            config,
            activity,
            baseten: baseten.map(BasetenState::new),
            scaling,
        }
    }
}
