//! Fresh large buffers: page faults, not copying, dominate filling them; so buffers are advised
//! onto huge pages, and large ones reused where their lifetimes allow (`Spare`).

/// Asks for transparent huge pages on a fresh, large buffer before it is first written. Faulting
/// in 4 KiB pages made reading a 34 MB entry into new memory take 17 ms here; with 2 MiB pages it
/// takes a fifth of that (numpy gives its large arrays the same advice). Best effort.
#[cfg(target_os = "linux")]
pub fn advise_huge_pages(ptr: *mut u8, len: usize) {
    const HUGE: usize = 2 << 20;
    let start = (ptr as usize).next_multiple_of(HUGE);
    let end = (ptr as usize + len) / HUGE * HUGE;
    if end > start {
        // SAFETY: advice on whole pages inside a live allocation; it never changes contents.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
}

#[cfg(not(target_os = "linux"))]
pub fn advise_huge_pages(_ptr: *mut u8, _len: usize) {}

/// Large byte buffers given back once used, for the next ones of a similar size: a value's
/// encoded frames live until the writer has written them, so each new value's frames would
/// otherwise land in memory that the allocator has just returned to the kernel, and pay its page
/// faults again (they cost more than compressing in the miss loop of a 2-core VM). Bounded in
/// bytes; never blocks (a lock held at a fork would stay held in the child).
pub struct Spare {
    buffers: parking_lot::Mutex<Vec<Vec<u8>>>,
    limit: usize,
}

/// Buffers below this many bytes are left to the allocator, which reuses them well.
const SPARE_MIN: usize = 1 << 20;

impl Spare {
    pub const fn new(limit: usize) -> Spare {
        Spare { buffers: parking_lot::const_mutex(Vec::new()), limit }
    }

    /// An empty buffer with room for `len` bytes and at most twice that (more would be held for
    /// nothing), if one was given back.
    pub fn take(&self, len: usize) -> Option<Vec<u8>> {
        let mut buffers = self.buffers.try_lock()?;
        let fits = |b: &&Vec<u8>| (len..=len.saturating_mul(2)).contains(&b.capacity());
        let best = buffers.iter().filter(fits).map(Vec::capacity).min()?;
        let at = buffers.iter().position(|b| b.capacity() == best)?;
        let mut buffer = buffers.swap_remove(at);
        buffer.clear();
        Some(buffer)
    }

    /// Keeps `buffer` for a later `take` if it is large and fits within the limit; else frees it.
    pub fn give_back(&self, buffer: Vec<u8>) {
        if buffer.capacity() < SPARE_MIN {
            return;
        }
        if let Some(mut buffers) = self.buffers.try_lock() {
            if buffers.iter().map(Vec::capacity).sum::<usize>() + buffer.capacity() <= self.limit {
                buffers.push(buffer);
            }
        }
    }

    /// Bytes held for later use.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.buffers.lock().iter().map(Vec::capacity).sum()
    }
}

/// The spare buffers of encoded frames (`codec::encode`, given back when a `store::Encoded` is
/// dropped): a few values' worth.
pub static FRAMES: Spare = Spare::new(32 << 20);

/// An empty buffer for `len` bytes: a spare one, or a fresh one advised onto huge pages. A fresh
/// one that may be given back gets an eighth more room, so that it fits the next value's buffer
/// of about the same size (the frames of similar values differ by a few bytes).
pub fn buffer_for(spare: &Spare, len: usize) -> Vec<u8> {
    spare.take(len).unwrap_or_else(|| {
        let room = if len >= SPARE_MIN { len + len / 8 } else { len };
        let mut fresh = Vec::with_capacity(room);
        advise_huge_pages(fresh.as_mut_ptr(), room);
        fresh
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_taken_again_for_a_similar_size_only() {
        let spare = Spare::new(8 << 20);
        let mut given = Vec::with_capacity(3 << 20);
        given.extend_from_slice(&[7u8; 100]);
        let address = given.as_ptr();
        spare.give_back(given);
        assert!(spare.take(1 << 20).is_none(), "more than twice the size asked for");
        assert!(spare.take(4 << 20).is_none(), "too small");
        let taken = spare.take(2 << 20).expect("fits");
        assert_eq!((taken.as_ptr(), taken.len()), (address, 0));
        assert!(spare.take(2 << 20).is_none(), "taken once");
    }

    #[test]
    fn spare_buffers_are_bounded_and_small_ones_left_to_the_allocator() {
        let spare = Spare::new(5 << 20);
        spare.give_back(Vec::with_capacity(SPARE_MIN - 1));
        spare.give_back(Vec::with_capacity(3 << 20));
        spare.give_back(Vec::with_capacity(3 << 20));
        assert_eq!(spare.held(), 3 << 20);
        assert!(buffer_for(&spare, 2 << 20).capacity() >= 2 << 20);
        assert_eq!(spare.held(), 0);
        let fresh = buffer_for(&spare, 2 << 20);
        assert!(fresh.capacity() >= (2 << 20) + (2 << 20) / 8, "a fresh one, with room to be reused");
        spare.give_back(fresh);
        assert!(spare.take((2 << 20) + 4096).is_some(), "for a slightly larger buffer next");
    }
}
