//! The front doors' context: the store, their settings, and the state only
//! the doors keep (the live page's recent jobs, Baseten's polling limiter).

use std::sync::Arc;

use super::baseten::{Baseten, BasetenState};
use super::recent::Recent;
use crate::context::DoorConfig;
use crate::scaling::Scaling;

/// What every front door answers from; shared by the clones of one service.
pub(crate) struct Doors<St> {
    pub(crate) store: Arc<St>,
    pub(crate) config: DoorConfig,
    /// Jobs submitted through this process, for the live page.
    pub(crate) recent: Recent,
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
    ) -> Self {
        Doors {
            store,
            config,
            recent: Recent::default(),
            baseten: baseten.map(BasetenState::new),
            scaling,
        }
    }
}
