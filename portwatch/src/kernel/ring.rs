//! A BPF ring buffer read from userspace with its data pages mapped once.
//!
//! The kernel lets a reader map the data area twice in a row, so that a
//! record running past the end reads as one slice; aya and libbpf map it
//! that way. Every page of the mapping is resident from mmap on (the kernel
//! inserts them all), so a 4 MiB ring then costs 8 MiB of the tracer's RSS
//! for 4 MiB of memory. Here the data area is mapped once and the rare
//! record that wraps is copied out in two pieces.
//!
//! Layout (kernel/bpf/ringbuf.c): page 0 holds the consumer position (the
//! only page a reader may map writable), page 1 the producer position, then
//! the data pages. Each record starts with an 8-byte header: its length,
//! with a busy bit while the producer has it reserved and a discard bit if
//! it was discarded; records are 8-byte aligned, so a header never wraps.

use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    ptr::NonNull,
    sync::atomic::{fence, AtomicU32, AtomicUsize, Ordering},
};

use anyhow::{bail, Context as _, Result};
use aya::maps::{Map, MapData};

const BUSY: u32 = 1 << 31;
const DISCARD: u32 = 1 << 30;
const HDR: usize = 8;

/// Where the three parts of a ring are in this process's memory.
struct View {
    consumer: NonNull<AtomicUsize>,
    producer: NonNull<AtomicUsize>,
    data: NonNull<u8>,
    /// Bytes of data, a power of two.
    size: usize,
}

/// The reader's side of one ring: its position and what it has to re-check
/// before it may wait for a wake-up.
struct Reader {
    view: View,
    pos: usize,
    producer_seen: usize,
    /// A record was consumed since the producer position was last read:
    /// before concluding the ring is empty, order that store before the
    /// next load, or a producer that saw the old position skips the wake-up.
    needs_wakeup: bool,
    /// A record that runs past the end of the data area, made contiguous.
    wrapped: Vec<u8>,
}

impl Reader {
    fn new(view: View) -> Reader {
        // SAFETY: the positions are live, aligned words for the reader's life.
        let pos = unsafe { view.consumer.as_ref() }.load(Ordering::Acquire);
        // SAFETY: as above.
        let producer_seen = unsafe { view.producer.as_ref() }.load(Ordering::Acquire);
        Reader {
            view,
            pos,
            producer_seen,
            needs_wakeup: false,
            wrapped: Vec::new(),
        }
    }

    /// Hands up to `max` committed records to `f`, in order; true when the
    /// ring was emptied (or the next record is still being written: its
    /// commit wakes the reader).
    fn read(&mut self, max: usize, f: &mut impl FnMut(&[u8])) -> bool {
        let mask = self.view.size - 1;
        let mut n = 0;
        loop {
            if self.pos == self.producer_seen {
                if self.needs_wakeup {
                    fence(Ordering::SeqCst);
                    self.needs_wakeup = false;
                }
                // SAFETY: as in `new`.
                self.producer_seen = unsafe { self.view.producer.as_ref() }.load(Ordering::Acquire);
                if self.pos == self.producer_seen {
                    return true;
                }
            }
            if n == max {
                return false;
            }
            let off = self.pos & mask;
            // SAFETY: off < size and 8-aligned, so the header lies inside
            // the data area; the producer commits it with a full barrier.
            let hdr = unsafe { &*self.view.data.as_ptr().add(off).cast::<AtomicU32>() }
                .load(Ordering::Acquire);
            if hdr & BUSY != 0 {
                if !self.needs_wakeup {
                    return true;
                }
                fence(Ordering::SeqCst);
                self.needs_wakeup = false;
                continue;
            }
            // A length beyond the area would be a kernel bug; never read
            // outside the mapping for it.
            let len = ((hdr & !(BUSY | DISCARD)) as usize).min(self.view.size - HDR);
            if hdr & DISCARD == 0 {
                f(self.record(off + HDR, len));
                n += 1;
            }
            self.pos = self.pos.wrapping_add((HDR + len).next_multiple_of(8));
            // The kernel reuses the record's bytes only after this store.
            // SAFETY: as in `new`.
            unsafe { self.view.consumer.as_ref() }.store(self.pos, Ordering::Release);
            self.needs_wakeup = true;
        }
    }

    /// The `len` bytes at `start` (which may be `size`: the record then
    /// begins at the area's start).
    fn record(&mut self, start: usize, len: usize) -> &[u8] {
        let size = self.view.size;
        let start = if start == size { 0 } else { start };
        if start + len <= size {
            // SAFETY: [start, start + len) is inside the area.
            return unsafe { std::slice::from_raw_parts(self.view.data.as_ptr().add(start), len) };
        }
        let head = size - start;
        let data = self.view.data.as_ptr();
        self.wrapped.clear();
        // SAFETY: [start, size) and [0, len - head) are inside the area.
        unsafe {
            self.wrapped
                .extend_from_slice(std::slice::from_raw_parts(data.add(start), head));
            self.wrapped
                .extend_from_slice(std::slice::from_raw_parts(data, len - head));
        }
        &self.wrapped
    }
}

/// One mmap'd region, unmapped on drop.
struct Mapping {
    addr: NonNull<libc::c_void>,
    len: usize,
}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, len: usize, prot: libc::c_int, offset: usize) -> Result<Mapping> {
        // SAFETY: a fresh shared mapping of the map's fd; checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("mmap of the ring buffer");
        }
        Ok(Mapping {
            addr: NonNull::new(p).context("mmap returned null")?,
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped in `new`, not used after this.
        unsafe { libc::munmap(self.addr.as_ptr(), self.len) };
    }
}

/// A ring buffer map, read in place.
pub struct Ring {
    reader: Reader,
    // Dropped after `reader`, whose pointers are into them.
    _consumer: Mapping,
    _producer: Mapping,
    map: MapData,
}

// SAFETY: the mappings belong to this value alone; nothing else in the
// process reads or writes them.
unsafe impl Send for Ring {}

impl Ring {
    /// Takes a `BPF_MAP_TYPE_RINGBUF` map and maps it for reading.
    pub fn new(map: Map) -> Result<Ring> {
        let Map::RingBuf(map) = map else {
            bail!("not a ring buffer map");
        };
        let size = map.info()?.max_entries() as usize;
        let page = page_size();
        if !size.is_power_of_two() || size < page {
            bail!("ring buffer of {size} bytes: not a power-of-two number of pages");
        }
        let fd = map.fd().as_fd();
        let consumer = Mapping::new(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = Mapping::new(fd, page + size, libc::PROT_READ, page)?;
        let view = View {
            consumer: consumer.addr.cast(),
            producer: producer.addr.cast(),
            // SAFETY: the data area starts one page into the mapping.
            data: unsafe { producer.addr.cast::<u8>().add(page) },
            size,
        };
        Ok(Ring {
            reader: Reader::new(view),
            _consumer: consumer,
            _producer: producer,
            map,
        })
    }

    /// Hands up to `max` records to `f`; true when the ring was emptied.
    pub fn read(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> bool {
        self.reader.read(max, &mut f)
    }
}

impl AsRawFd for Ring {
    fn as_raw_fd(&self) -> RawFd {
        self.map.fd().as_fd().as_raw_fd()
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring in ordinary memory, written the way the kernel writes one.
    struct Fake {
        consumer: Box<AtomicUsize>,
        producer: Box<AtomicUsize>,
        data: Vec<u64>,
        size: usize,
    }

    impl Fake {
        fn new(size: usize) -> Fake {
            Fake {
                consumer: Box::new(AtomicUsize::new(0)),
                producer: Box::new(AtomicUsize::new(0)),
                data: vec![0; size / 8],
                size,
            }
        }

        fn view(&mut self) -> View {
            View {
                consumer: NonNull::from(&*self.consumer),
                producer: NonNull::from(&*self.producer),
                data: NonNull::new(self.data.as_mut_ptr().cast()).unwrap(),
                size: self.size,
            }
        }

        fn bytes(&mut self) -> &mut [u8] {
            let n = self.size;
            // SAFETY: `data` holds `size` bytes, borrowed mutably here.
            unsafe { std::slice::from_raw_parts_mut(self.data.as_mut_ptr().cast(), n) }
        }

        /// Appends a record with header bits `flags`, wrapping its body.
        fn push(&mut self, body: &[u8], flags: u32) {
            let pos = self.producer.load(Ordering::Relaxed);
            let size = self.size;
            let off = pos & (size - 1);
            let hdr = (body.len() as u32 | flags).to_ne_bytes();
            self.bytes()[off..off + 4].copy_from_slice(&hdr);
            for (i, b) in body.iter().enumerate() {
                let at = (off + HDR + i) & (size - 1);
                self.bytes()[at] = *b;
            }
            let next = pos + (HDR + body.len()).next_multiple_of(8);
            self.producer.store(next, Ordering::Release);
        }
    }

    fn body(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
    }

    fn read_all(r: &mut Reader, max: usize) -> (Vec<Vec<u8>>, bool) {
        let mut got = vec![];
        let emptied = r.read(max, &mut |b: &[u8]| got.push(b.to_vec()));
        (got, emptied)
    }

    #[test]
    fn records_running_past_the_end_come_out_whole() {
        let mut fake = Fake::new(256);
        let mut r = Reader::new(fake.view());
        let mut want = vec![];
        // 44-byte bodies take 56 bytes: over many laps every offset of
        // the wrap is hit, among them a header in the last 8 bytes.
        for lap in 0..40u8 {
            for k in 0..3u8 {
                let b = body(lap.wrapping_mul(7).wrapping_add(k), 44);
                fake.push(&b, 0);
                want.push(b);
            }
            let (got, emptied) = read_all(&mut r, usize::MAX);
            assert!(emptied);
            assert_eq!(got, std::mem::take(&mut want), "lap {lap}");
            assert_eq!(
                fake.consumer.load(Ordering::Relaxed),
                fake.producer.load(Ordering::Relaxed)
            );
        }
    }

    #[test]
    fn discarded_records_are_skipped_and_busy_ones_wait() {
        let mut fake = Fake::new(4096);
        let mut r = Reader::new(fake.view());
        fake.push(&body(1, 10), 0);
        fake.push(&body(2, 10), DISCARD);
        fake.push(&body(3, 12), 0);
        fake.push(&body(4, 16), BUSY);
        let (got, emptied) = read_all(&mut r, usize::MAX);
        assert_eq!(got, vec![body(1, 10), body(3, 12)]);
        assert!(emptied, "a record still reserved ends the batch");
        // The reader stopped at the busy record, and its position says so.
        assert_eq!(fake.consumer.load(Ordering::Relaxed), 3 * 24);
        // Committed: the next read hands it out.
        fake.bytes()[72..76].copy_from_slice(&16u32.to_ne_bytes());
        let (got, _) = read_all(&mut r, usize::MAX);
        assert_eq!(got, vec![body(4, 16)]);
    }

    #[test]
    fn a_batch_stops_at_max_and_says_more_is_waiting() {
        let mut fake = Fake::new(4096);
        let mut r = Reader::new(fake.view());
        for i in 0..5 {
            fake.push(&body(i, 8), 0);
        }
        let (got, emptied) = read_all(&mut r, 3);
        assert_eq!((got.len(), emptied), (3, false));
        let (got, emptied) = read_all(&mut r, 3);
        assert_eq!((got.len(), emptied), (2, true));
        let (got, emptied) = read_all(&mut r, 3);
        assert_eq!((got.len(), emptied), (0, true));
    }
}
