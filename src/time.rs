//! Wall-clock timestamps that follow tokio's clock.
//!
//! Jobs carry wall-clock times (they are shown to clients as RFC 3339 and, with
//! a shared store, compared across processes), yet expiry and backoff must be
//! testable on tokio's paused clock. So "now" is the wall clock read once, at
//! first use, plus the time tokio's clock has advanced since: in production that
//! is the wall clock (monotonic, immune to NTP steps within a process); under
//! `tokio::time::pause()` it moves only when the test advances time.

use std::fmt;
use std::num::NonZeroU64;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A point in wall-clock time, in milliseconds since the Unix epoch.
///
/// Displays as RFC 3339 in UTC with milliseconds: `2026-11-22T08:53:46.123Z`.
///
/// Held as the milliseconds plus one in a `NonZeroU64`, so that an
/// `Option<Timestamp>` is 8 bytes, not 16: a job has five of them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(NonZeroU64);

impl Default for Timestamp {
    /// The Unix epoch.
    fn default() -> Self {
        Timestamp::from_millis(0)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Timestamp").field(&self.as_millis()).finish()
    }
}

static ANCHOR: OnceLock<(u64, tokio::time::Instant)> = OnceLock::new();

fn anchor() -> (u64, tokio::time::Instant) {
    *ANCHOR.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        (wall, tokio::time::Instant::now())
    })
}

impl Timestamp {
    /// Now, on tokio's clock (see the module docs).
    pub fn now() -> Self {
        let (wall, at) = anchor();
        let now = tokio::time::Instant::now();
        // Another runtime's clock may have set the anchor (tests run several
        // paused clocks in one process), so "now" may be before it: count
        // back rather than stop there, so that every clock keeps moving.
        match now.checked_duration_since(at) {
            Some(elapsed) => {
                Timestamp::from_millis(wall.saturating_add(elapsed.as_millis() as u64))
            }
            None => {
                let before = at.duration_since(now);
                // Round up, so that `after` stays exact: floor(x + d) = floor(x) + d.
                let ms =
                    before.as_millis() as u64 + u64::from(before.subsec_nanos() % 1_000_000 != 0);
                Timestamp::from_millis(wall.saturating_sub(ms))
            }
        }
    }

    /// A timestamp from milliseconds since the Unix epoch.
    /// The last millisecond, `u64::MAX`, reads as the one before it.
    pub const fn from_millis(millis: u64) -> Self {
        Timestamp(NonZeroU64::MIN.saturating_add(millis))
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> u64 {
        self.0.get() - 1
    }

    /// This time plus `d`, saturating.
    pub fn after(self, d: Duration) -> Self {
        Timestamp::from_millis(
            self.as_millis()
                .saturating_add(d.as_millis().min(u64::MAX as u128) as u64),
        )
    }

    /// This time minus `d`, saturating at the epoch.
    pub fn before(self, d: Duration) -> Self {
        Timestamp::from_millis(
            self.as_millis()
                .saturating_sub(d.as_millis().min(u64::MAX as u128) as u64),
        )
    }

    /// How long from `earlier` to `self` (zero if `earlier` is later).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.as_millis().saturating_sub(earlier.as_millis()))
    }

    /// The tokio instant at which tokio's clock reads this time, for timers.
    pub fn to_instant(self) -> tokio::time::Instant {
        let (wall, at) = anchor();
        let ms = self.as_millis();
        if ms >= wall {
            at + Duration::from_millis(ms - wall)
        } else {
            at.checked_sub(Duration::from_millis(wall - ms))
                .unwrap_or(at)
        }
    }
}

impl Timestamp {
    /// Year, month, day, hour, minute, second and millisecond, in UTC.
    fn civil(self) -> (i64, u32, u32, u64, u64, u64, u64) {
        let ms = self.as_millis();
        let secs = ms / 1000;
        let (y, m, d) = civil_from_days((secs / 86_400) as i64);
        let rem = secs % 86_400;
        (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60, ms % 1000)
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`, written digit by digit (every status
    /// document carries several), or `None` past the year 9999.
    fn rfc3339(self) -> Option<[u8; 24]> {
        let (y, m, d, hour, minute, second, millis) = self.civil();
        if !(0..=9999).contains(&y) {
            return None;
        }
        let mut out = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut n: u64| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        put(0, 4, y as u64);
        put(5, 2, u64::from(m));
        put(8, 2, u64::from(d));
        put(11, 2, hour);
        put(14, 2, minute);
        put(17, 2, second);
        put(20, 3, millis);
        Some(out)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(text) = self.rfc3339() {
            return f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?);
        }
        let (y, m, d, hour, minute, second, millis) = self.civil();
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{hour:02}:{minute:02}:{second:02}.{millis:03}Z"
        )
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.rfc3339() {
            Some(text) => s.serialize_str(std::str::from_utf8(&text).unwrap_or_default()),
            None => s.collect_str(self),
        }
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
/// Howard Hinnant's `civil_from_days`, exact for every date we can meet.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn years_past_9999_still_format() {
        assert_eq!(
            Timestamp::from_millis(253_402_300_800_000).to_string(),
            "10000-01-01T00:00:00.000Z"
        );
        assert_eq!(
            serde_json::to_string(&Timestamp::from_millis(1_795_337_626_123)).unwrap(),
            "\"2026-11-22T08:53:46.123Z\""
        );
    }

    #[test]
    fn millis_round_trip_and_an_absent_time_costs_nothing() {
        for ms in [0, 1, 1_795_337_626_123, u64::MAX - 1] {
            assert_eq!(Timestamp::from_millis(ms).as_millis(), ms);
        }
        assert_eq!(Timestamp::from_millis(u64::MAX).as_millis(), u64::MAX - 1);
        assert_eq!(Timestamp::default().as_millis(), 0);
        assert!(Timestamp::from_millis(1) < Timestamp::from_millis(2));
        assert_eq!(
            Timestamp::from_millis(5).after(Duration::MAX),
            Timestamp::from_millis(u64::MAX)
        );
        assert_eq!(std::mem::size_of::<Option<Timestamp>>(), 8);
    }

    #[test]
    fn formats_rfc3339_utc_with_millis() {
        assert_eq!(
            Timestamp::from_millis(0).to_string(),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            Timestamp::from_millis(1_795_337_626_123).to_string(),
            "2026-11-22T08:53:46.123Z"
        );
        // A leap day and the end of a leap year.
        assert_eq!(
            Timestamp::from_millis(951_782_400_000).to_string(),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(
            Timestamp::from_millis(1_735_689_599_999).to_string(),
            "2024-12-31T23:59:59.999Z"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn follows_the_paused_clock() {
        let a = Timestamp::now();
        tokio::time::advance(Duration::from_secs(3600)).await;
        let b = Timestamp::now();
        assert_eq!(b.since(a), Duration::from_secs(3600));
        assert!(b.to_instant() <= tokio::time::Instant::now());
    }
}
