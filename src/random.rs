//! Random bytes from the operating system's CSPRNG, without a system call
//! each time.
//!
//! Job ids, trace and span ids, and backoff jitter are drawn on the submit
//! and claim paths. The OS's bytes are fetched a kilobyte at a time into a
//! per-thread buffer and each byte is handed out once: one system call serves
//! about sixty job ids. Nothing is derived or stretched: every byte came from
//! the OS. (A process that forks without exec would share the unused rest
//! with its child; tokio does not survive a fork either.)

use std::cell::RefCell;

const SIZE: usize = 1024;

struct OsRandom {
    buf: [u8; SIZE],
    used: usize,
}

thread_local! {
    // Starts used up, so the first draw fills it.
    static OS_RANDOM: RefCell<OsRandom> =
        const { RefCell::new(OsRandom { buf: [0; SIZE], used: SIZE }) };
}

/// Fills `out` with bytes from the OS CSPRNG.
///
/// # Panics
///
/// If the operating system has no random source to offer, which no supported
/// platform lacks.
pub(crate) fn fill(out: &mut [u8]) {
    OS_RANDOM.with_borrow_mut(|random| {
        let mut filled = 0;
        while filled < out.len() {
            if random.used == SIZE {
                getrandom::fill(&mut random.buf).expect("the OS random source failed");
                random.used = 0;
            }
            let n = (out.len() - filled).min(SIZE - random.used);
            out[filled..filled + n].copy_from_slice(&random.buf[random.used..random.used + n]);
            random.used += n;
            filled += n;
        }
    });
}

/// An array of random bytes.
pub(crate) fn bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    fill(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_span_refills_and_never_repeat() {
        let mut seen = std::collections::HashSet::new();
        // 3 000 draws of 16 bytes cross many refills, some mid-draw.
        for _ in 0..3000 {
            assert!(seen.insert(bytes::<16>()), "a 128-bit draw repeated");
        }
        let mut big = vec![0u8; 5000];
        fill(&mut big);
        assert!(big.iter().any(|&b| b != 0));
    }
}
