//! The names of the store's keys and channels (the layout is in the
//! [module docs](super)).

use super::functions::{Function, Invocation};
use crate::job::JobId;
use crate::time::Timestamp;

pub(super) struct Keys {
    /// `{ns}:`
    pub(super) prefix: String,
    /// The keys every script takes first, in the order `prelude.lua` reads them.
    common: [String; 8],
    pub(super) changed: String,
    pub(super) work: String,
    pub(super) deliver: String,
}

impl Keys {
    /// A function call with the keys and arguments every function takes.
    pub(super) fn invocation(&self, function: Function, now: Timestamp) -> Invocation {
        let mut inv = Invocation::new(function);
        for key in &self.common {
            inv.key(key.as_str());
        }
        inv.arg(self.prefix.as_str()).arg(now.as_millis());
        inv
    }

    pub(super) fn new(namespace: &str) -> Self {
        let prefix = format!("{{{namespace}}}:");
        let k = |name: &str| format!("{prefix}{name}");
        Keys {
            common: [
                k("ready:0"),
                k("ready:1"),
                k("ready:2"),
                k("due"),
                k("seq"),
                k("n:retrying"),
                k("n:in_progress"),
                k("deliveries"),
            ],
            changed: k("changed"),
            work: k("work"),
            deliver: k("deliver"),
            prefix,
        }
    }

    pub(super) fn job(&self, id: JobId) -> String {
        format!("{}job:{id}", self.prefix)
    }

    pub(super) fn idempotency(&self, owner: Option<&str>, key: &str) -> String {
        match owner {
            None => format!("{}idem:-:{key}", self.prefix),
            Some(o) => format!("{}idem:{}:{o}:{key}", self.prefix, o.len()),
        }
    }
}
