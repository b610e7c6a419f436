//! A job's id: short, URL-safe and unguessable.

use std::fmt;
use std::str::FromStr;

/// Length of every [`JobId`].
pub const JOB_ID_LEN: usize = 16;

/// A job's id: 16 characters of `[0-9a-z]` from the OS CSPRNG (about 82 bits).
///
/// Valid for VESSL clients (1–16 lowercase alphanumerics) and unguessable.
///
/// ```
/// use tower_defer::JobId;
///
/// let id = JobId::random();
/// assert_eq!(id.as_str().len(), 16);
/// assert_eq!(id.as_str().parse::<JobId>().unwrap(), id);
/// assert!("NOT-AN-ID".parse::<JobId>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId([u8; JOB_ID_LEN]);

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

impl JobId {
    /// A fresh id from the operating system's CSPRNG, drawn through a
    /// per-thread buffer so that most ids cost no system call.
    ///
    /// # Panics
    ///
    /// If the operating system has no random source to offer, which no
    /// supported platform lacks.
    pub fn random() -> Self {
        let mut out = [0u8; JOB_ID_LEN];
        let mut filled = 0;
        while filled < JOB_ID_LEN {
            // Rejection sampling: 252 = 7 * 36, so `b % 36` is uniform below it.
            for b in crate::random::bytes::<JOB_ID_LEN>() {
                if b < 252 && filled < JOB_ID_LEN {
                    out[filled] = ALPHABET[usize::from(b % 36)];
                    filled += 1;
                }
            }
        }
        JobId(out)
    }

    /// A fresh id that names `shard` of `shards` (see [`shard`](Self::shard)):
    /// the Redis store spreads a namespace over shards and finds a job's
    /// shard from its id alone. The first character carries it, so the id
    /// keeps its form and loses `log2(shards)` bits of its randomness.
    ///
    /// # Panics
    ///
    /// If `shards` is 0 or above 36, or `shard` is not below `shards`.
    // Only the Redis store has shards.
    #[cfg(feature = "redis")]
    pub(crate) fn random_in(shard: usize, shards: usize) -> Self {
        assert!(
            (1..=36).contains(&shards) && shard < shards,
            "shard {shard} of {shards}"
        );
        let mut id = Self::random();
        // The first character's value is uniform in 0..36; bring it into
        // the class of `shard` modulo `shards`, staying below 36.
        let first = usize::from(Self::digit(id.0[0]));
        let classes = (ALPHABET.len() - shard).div_ceil(shards);
        id.0[0] = ALPHABET[shard + shards * (first % classes)];
        id
    }

    /// The shard of `shards` this id names: its first character's value
    /// (0–35) modulo `shards`. Every id names a shard, whichever made it.
    #[cfg(feature = "redis")]
    pub(crate) fn shard(&self, shards: usize) -> usize {
        usize::from(Self::digit(self.0[0])) % shards.max(1)
    }

    /// A character's value in [`ALPHABET`].
    #[cfg(feature = "redis")]
    fn digit(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            _ => c - b'a' + 10,
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only ever built from ALPHABET bytes.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.as_str())
    }
}

/// The error of parsing a [`JobId`] from text that is not 16 of `[0-9a-z]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidJobId(());

impl fmt::Display for InvalidJobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a job id is 16 characters of 0-9 and a-z")
    }
}

impl std::error::Error for InvalidJobId {}

impl FromStr for JobId {
    type Err = InvalidJobId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes: [u8; JOB_ID_LEN] = s.as_bytes().try_into().map_err(|_| InvalidJobId(()))?;
        if bytes
            .iter()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        {
            Ok(JobId(bytes))
        } else {
            Err(InvalidJobId(()))
        }
    }
}

impl serde::Serialize for JobId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_16_lowercase_alphanumerics_and_distinct() {
        let a = JobId::random();
        assert!(a
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
        assert_ne!(a, JobId::random());
        #[cfg(feature = "redis")]
        for shards in [1, 2, 3, 7, 36] {
            for shard in 0..shards {
                let id = JobId::random_in(shard, shards);
                assert_eq!(id.shard(shards), shard, "{id} of {shards}");
                assert_eq!(id.as_str().parse::<JobId>().unwrap(), id);
            }
        }
        for bad in [
            "",
            "abc",
            "0123456789abcdeF",
            "0123456789abcdef0",
            "../../etc/passwd",
        ] {
            assert!(bad.parse::<JobId>().is_err(), "{bad}");
        }
    }
}
