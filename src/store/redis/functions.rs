//! The Lua functions: one per transition, each run atomically by Redis.
//!
//! They form one library, loaded with `FUNCTION LOAD` (Redis 7.0 or later):
//! the shared code once ([`SHARED`]: `lua/life.lua`, the places and codes
//! of a job's packed scalars, generated from the list in `life.rs`;
//! `lua/prelude.lua`, the call's state and a job's form; `lua/job.lua`, the
//! transitions of [`Job`](crate::Job); `lua/bookkeeping.lua`, the ready
//! lists, the due index and the counters; `lua/claiming.lua`, how a claim
//! chooses and takes jobs), then each function, whose body
//! is its own file. Redis runs a library's top level once, when it loads
//! it, so the shared closures and tables are made once rather than on every
//! call (as a script sent with `EVALSHA` would make them).
//!
//! The library's name, and so its functions', carries a hash of its source:
//! replicas running different versions each call their own, and a library
//! that is there is the one this build wrote. [`Invocation`] loads it again
//! when Redis has lost it (a restart without persistence, `FUNCTION FLUSH`).

use std::sync::LazyLock;

use ::redis::aio::ConnectionLike;
use ::redis::{Cmd, FromRedisValue, RedisError, RedisResult, ToRedisArgs};

use super::keys::fnv1a;
use super::life::LIFE_LUA;

/// Declares the functions once: [`Function`] and the files of their bodies.
macro_rules! functions {
    ($($function:ident = $file:literal,)*) => {
        /// One function of the library.
        #[derive(Clone, Copy, Debug)]
        pub(super) enum Function {
            $($function),*
        }

        /// Each function's short name and body, in the order of [`Function`].
        const BODIES: &[(&str, &str)] = &[
            $(($file, include_str!(concat!("lua/", $file, ".lua")))),*
        ];
    };
}

functions! {
    Enqueue = "enqueue",
    Claim = "claim",
    ClaimBatch = "claim_batch",
    Extend = "extend",
    Complete = "complete",
    RetryLater = "retry_later",
    Cancel = "cancel",
    Sweep = "sweep",
    ClaimDelivery = "claim_delivery",
    RecordDelivery = "record_delivery",
    Peek = "peek",
    Stats = "stats",
    WakeUnavailable = "wake_unavailable",
}

/// The code every function shares, in the order the library holds it.
const SHARED: [&str; 5] = [
    LIFE_LUA,
    include_str!("lua/prelude.lua"),
    include_str!("lua/job.lua"),
    include_str!("lua/bookkeeping.lua"),
    include_str!("lua/claiming.lua"),
];

/// The library as Redis loads it, and its functions' full names.
struct Library {
    source: String,
    names: Vec<String>,
}

static LIBRARY: LazyLock<Library> = LazyLock::new(|| {
    // A name that changes with the source.
    let hash = fnv1a(
        BODIES
            .iter()
            .flat_map(|(name, body)| [*name, *body])
            .chain(SHARED)
            .flat_map(str::bytes),
    );
    let library = format!("tower_defer_{hash:016x}");
    let mut source = format!("#!lua name={library}\n{}", SHARED.concat());
    let mut names = Vec::with_capacity(BODIES.len());
    for (short, body) in BODIES {
        let name = format!("{library}_{short}");
        // A body is a chunk of its own (its locals, its final return): as
        // the callback's body it is the same code.
        source.push_str(&format!(
            "redis.register_function('{name}', function(KEYS, ARGV)\nbegin(KEYS, ARGV)\n{body}\nend)\n"
        ));
        names.push(name);
    }
    Library { source, names }
});

/// Loads the library (again: loading the same source twice is harmless).
pub(super) async fn load(conn: &mut impl ConnectionLike) -> RedisResult<()> {
    ::redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(LIBRARY.source.as_str())
        .query_async::<String>(conn)
        .await
        .map(drop)
}

/// Redis's answer to a call of a function it does not have.
fn not_loaded(e: &RedisError) -> bool {
    e.code() == Some("ERR")
        && e.detail()
            .is_some_and(|d| d.starts_with("Function not found"))
}

/// One call of a function: `FCALL name numkeys keys... args...`.
pub(super) struct Invocation {
    function: Function,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Invocation {
    pub(super) fn new(function: Function) -> Self {
        Invocation {
            function,
            keys: Vec::with_capacity(10),
            args: Vec::with_capacity(12),
        }
    }

    pub(super) fn key(&mut self, key: impl ToRedisArgs) -> &mut Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    pub(super) fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    fn cmd(&self) -> Cmd {
        let mut cmd = ::redis::cmd("FCALL");
        cmd.arg(LIBRARY.names[self.function as usize].as_str())
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        cmd
    }

    /// Calls the function, loading the library first if Redis has lost it.
    pub(super) async fn invoke_async<T: FromRedisValue>(
        &self,
        conn: &mut impl ConnectionLike,
    ) -> RedisResult<T> {
        match self.cmd().query_async(conn).await {
            Err(e) if not_loaded(&e) => {
                load(conn).await?;
                self.cmd().query_async(conn).await
            }
            answer => answer,
        }
    }
}

/// Every script's source, for tests that check them against the codec:
/// the shared code first, then the functions (the generated
/// `lua/life.lua` is not among them).
#[cfg(test)]
pub(super) fn sources() -> Vec<&'static str> {
    SHARED[1..]
        .iter()
        .copied()
        .chain(BODIES.iter().map(|(_, body)| *body))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_has_a_name_of_the_library_and_a_body() {
        let library = &*LIBRARY;
        assert_eq!(library.names.len(), BODIES.len());
        let first = library.source.lines().next().unwrap();
        let name = first.strip_prefix("#!lua name=").unwrap();
        assert!(name.starts_with("tower_defer_"), "{first}");
        for (full, (short, _)) in library.names.iter().zip(BODIES) {
            assert_eq!(*full, format!("{name}_{short}"));
            assert!(library.source.contains(&format!("'{full}'")), "{full}");
        }
        assert_eq!(
            library.names[Function::Stats as usize],
            format!("{name}_stats")
        );
    }
}
