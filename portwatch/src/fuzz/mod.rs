//! A small mutational fuzzer for the parsers of bytes from outside the
//! process (cgroup paths, sysctls, BTF, tracefs formats, netlink replies,
//! /proc texts, ring-buffer records, command-line values), on the stable
//! toolchain.
//!
//! No coverage instrumentation: each target returns a signature of what the
//! parser made of the input (which error, how many items, which layout), and
//! an input with a signature not seen before joins the pool that mutations
//! start from. Mutations: bit flips, byte replace/insert/delete, interesting
//! values (0, 0x7f, 0x80, 0xff, integer edges), length-field tweaks for
//! binary formats, number and dictionary-token swaps for text, splicing two
//! pool entries, truncation, duplication; 1 to 8 of them stacked. The
//! generator is a seeded xorshift64*, so a run is reproducible (up to how
//! many inputs fit in its time).
//!
//! Each target is a `#[test]` in `targets`: it replays its corpus
//! (`portwatch/fuzz/corpus/<target>/`) and built-in seeds, then fuzzes for
//! `PORTWATCH_FUZZ_SECS` (default 2; 0 replays only). Every input must
//! return without a panic, allocate at most `ALLOC_BASE` plus the target's
//! bytes-per-input-byte at its peak, take less than `SLOW`, and pass the
//! target's own properties (asserts: round trips and the like). A failing
//! input is minimized, written to `target/fuzz-crashes/<target>/` and
//! printed hex-encoded. An input that aborts the process (stack overflow,
//! out of memory) or runs for `HANG` is written there too, as `aborted.bin`.

mod targets;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::{Cell, RefCell},
    collections::HashSet,
    ffi::CString,
    panic::{catch_unwind, AssertUnwindSafe},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering},
        Once, OnceLock,
    },
    time::{Duration, Instant},
};

/// What any input may allocate at its peak, on top of the target's share
/// per input byte.
const ALLOC_BASE: usize = 256 << 10;
/// An input slower than this (twice in a row) is a failure.
const SLOW: Duration = Duration::from_millis(250);
/// An input still running after this is a hang: written out, then abort.
const HANG: Duration = Duration::from_secs(30);
/// Inputs kept to mutate from, besides the seeds.
const POOL_MAX: usize = 512;
/// Seconds per target when `PORTWATCH_FUZZ_SECS` is not set.
const DEFAULT_SECS: f64 = 2.0;
const DEFAULT_SEED: u64 = 0x7057_f022_5eed_0001;

// ---------------------------------------------------------------- PRNG

/// xorshift64*, seeded through splitmix64.
pub(crate) struct Rng(u64);

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        // xorshift's state must never be 0.
        Rng(splitmix64(seed) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-enough in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    pub(crate) fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

/// FNV-1a: names to seeds, inputs to file names.
pub(crate) fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &c| {
        (h ^ c as u64).wrapping_mul(0x100_0000_01b3)
    })
}

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|c| format!("{c:02x}")).collect()
}

// ---------------------------------------------------------------- allocations

/// Counts, per thread and only while a target runs, the bytes allocated
/// and not yet freed, and their peak.
struct Counting;

#[derive(Clone, Copy)]
struct Track {
    on: bool,
    cur: isize,
    peak: isize,
}

thread_local! {
    // Const-initialised and without a destructor: safe to touch from the
    // allocator itself.
    static TRACK: Cell<Track> = const { Cell::new(Track { on: false, cur: 0, peak: 0 }) };
}

fn note(delta: isize) {
    let _ = TRACK.try_with(|t| {
        let mut v = t.get();
        if v.on {
            v.cur += delta;
            v.peak = v.peak.max(v.cur);
            t.set(v);
        }
    });
}

// SAFETY: every call goes to the system allocator unchanged; the counting
// touches only a thread-local Cell and never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's own guarantees.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            note(l.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's own guarantees.
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            note(l.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded with the caller's own guarantees.
        unsafe { System.dealloc(p, l) };
        note(-(l.size() as isize));
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: forwarded with the caller's own guarantees.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            note(new as isize - l.size() as isize);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn track_start() {
    TRACK.with(|t| {
        t.set(Track {
            on: true,
            cur: 0,
            peak: 0,
        })
    });
}

/// The peak since `track_start`, in bytes.
fn track_stop() -> usize {
    TRACK.with(|t| {
        let v = t.get();
        t.set(Track { on: false, ..v });
        v.peak.max(0) as usize
    })
}

// ---------------------------------------------------------------- panics

thread_local! {
    /// This thread runs a target: its panics are recorded, not printed.
    static QUIET: Cell<bool> = const { Cell::new(false) };
    /// (location, message) of the last quiet panic.
    static LAST_PANIC: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
}

/// A panic hook that keeps targets' panics quiet (the fuzzer reports them)
/// and leaves every other thread's panics to the previous hook; and the
/// SIGABRT handler and hang watchdog that write out an input in flight.
fn install_hooks() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                let loc = info
                    .location()
                    .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                    .unwrap_or_default();
                let msg = info.payload_as_str().unwrap_or("(no message)").to_string();
                LAST_PANIC.with(|p| *p.borrow_mut() = Some((loc, msg)));
            } else {
                prev(info)
            }
        }));
        // SAFETY: sigaction is plain C data, for which all zeroes is valid;
        // the handler only reads atomics and leaked data and makes
        // async-signal-safe calls (gettid, mkdir, open, write, close).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_abort as *const () as usize;
            sa.sa_flags = libc::SA_RESETHAND;
            libc::sigaction(libc::SIGABRT, &sa, std::ptr::null_mut());
        }
        std::thread::Builder::new()
            .name("fuzz-watchdog".into())
            .spawn(watchdog)
            .expect("watchdog thread");
    });
}

// ---------------------------------------------------------------- in flight

/// Where a target's aborted input goes, as C strings (leaked: the signal
/// handler may read them at any time).
struct SlotInfo {
    name: &'static str,
    /// target/fuzz-crashes, target/fuzz-crashes/<target>, .../aborted.bin
    dirs: [CString; 2],
    file: CString,
}

/// A running target's input, for the abort handler and the watchdog.
struct Slot {
    busy: AtomicBool,
    info: AtomicPtr<SlotInfo>,
    tid: AtomicI32,
    input: AtomicPtr<u8>,
    len: AtomicUsize,
    since_ms: AtomicU64,
}

const SLOTS: usize = 32;
static SLOT: [Slot; SLOTS] = [const {
    Slot {
        busy: AtomicBool::new(false),
        info: AtomicPtr::new(std::ptr::null_mut()),
        tid: AtomicI32::new(0),
        input: AtomicPtr::new(std::ptr::null_mut()),
        len: AtomicUsize::new(0),
        since_ms: AtomicU64::new(0),
    }
}; SLOTS];

fn now_ms() -> u64 {
    static T0: OnceLock<Instant> = OnceLock::new();
    T0.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// This thread's claim on a slot, released on drop.
struct Claim(Option<&'static Slot>);

impl Claim {
    fn new(name: &'static str) -> Claim {
        let dir = crash_root();
        let cs = |p: PathBuf| CString::new(p.into_os_string().into_encoded_bytes()).ok();
        let info = match (
            cs(dir.clone()),
            cs(dir.join(name)),
            cs(dir.join(name).join("aborted.bin")),
        ) {
            (Some(a), Some(b), Some(file)) => Box::leak(Box::new(SlotInfo {
                name,
                dirs: [a, b],
                file,
            })),
            _ => return Claim(None),
        };
        for s in &SLOT {
            if s.busy
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                // SAFETY: gettid has no preconditions.
                s.tid.store(unsafe { libc::gettid() }, Ordering::Release);
                s.info.store(info, Ordering::Release);
                return Claim(Some(s));
            }
        }
        Claim(None)
    }

    fn publish(&self, input: &[u8]) {
        if let Some(s) = self.0 {
            s.len.store(input.len(), Ordering::Release);
            s.since_ms.store(now_ms(), Ordering::Release);
            s.input.store(input.as_ptr().cast_mut(), Ordering::Release);
        }
    }

    fn clear(&self) {
        if let Some(s) = self.0 {
            s.input.store(std::ptr::null_mut(), Ordering::Release);
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(s) = self.0 {
            s.input.store(std::ptr::null_mut(), Ordering::Release);
            s.info.store(std::ptr::null_mut(), Ordering::Release);
            s.busy.store(false, Ordering::Release);
        }
    }
}

fn write_fd(fd: i32, b: &[u8]) {
    // SAFETY: `b` is live for the call; a short or failed write only loses
    // part of a best-effort report.
    unsafe { libc::write(fd, b.as_ptr().cast(), b.len()) };
}

/// Writes the slot's input to its `aborted.bin` and, hex-encoded, to
/// stderr. Async-signal-safe: no allocation, no locks.
fn dump_slot(s: &Slot, why: &str) {
    let info = s.info.load(Ordering::Acquire);
    let p = s.input.load(Ordering::Acquire);
    if info.is_null() || p.is_null() {
        return;
    }
    // SAFETY: SlotInfo is leaked, never freed.
    let info = unsafe { &*info };
    let len = s.len.load(Ordering::Acquire);
    // SAFETY: the input is published only while its target runs on it, and
    // that target is the thread being aborted or a hung one.
    let input = unsafe { std::slice::from_raw_parts(p, len) };
    // SAFETY: NUL-terminated paths; mkdir/open fail harmlessly.
    unsafe {
        for d in &info.dirs {
            libc::mkdir(d.as_ptr(), 0o755);
        }
        let fd = libc::open(
            info.file.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o644,
        );
        if fd >= 0 {
            write_fd(fd, input);
            libc::close(fd);
        }
    }
    for part in [
        "\nfuzz ",
        info.name,
        ": ",
        why,
        ", on this input, written to ",
    ] {
        write_fd(2, part.as_bytes());
    }
    write_fd(2, info.file.as_bytes());
    write_fd(2, b":\n");
    let mut buf = [0u8; 128];
    for chunk in input.chunks(buf.len() / 2) {
        for (i, c) in chunk.iter().enumerate() {
            buf[2 * i] = b"0123456789abcdef"[(c >> 4) as usize];
            buf[2 * i + 1] = b"0123456789abcdef"[(c & 15) as usize];
        }
        write_fd(2, &buf[..2 * chunk.len()]);
    }
    write_fd(2, b"\n");
}

extern "C" fn on_abort(_sig: libc::c_int) {
    // SAFETY: gettid has no preconditions.
    let me = unsafe { libc::gettid() };
    for s in &SLOT {
        if s.tid.load(Ordering::Acquire) == me {
            dump_slot(s, "the process aborted (stack overflow? out of memory?)");
        }
    }
    // SA_RESETHAND: abort() goes on to the default action.
}

fn watchdog() {
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = now_ms();
        for s in &SLOT {
            if !s.input.load(Ordering::Acquire).is_null()
                && now.saturating_sub(s.since_ms.load(Ordering::Acquire)) > HANG.as_millis() as u64
            {
                dump_slot(s, "an input has run for 30 s (a hang?)");
                std::process::abort();
            }
        }
    }
}

// ---------------------------------------------------------------- targets

/// One parser under test, and how to feed it.
pub(crate) struct Target {
    name: &'static str,
    seeds: Vec<Vec<u8>>,
    dict: Vec<Vec<u8>>,
    binary: bool,
    max_len: usize,
    alloc_per_byte: usize,
}

/// Why an input failed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Failure {
    Panic { location: String, message: String },
    Alloc { peak: usize, limit: usize },
    Slow { took: Duration },
}

impl Failure {
    /// Two failures are the same bug when this is equal (the minimizer
    /// keeps it).
    fn key(&self) -> String {
        match self {
            Failure::Panic { location, .. } => format!("panic at {location}"),
            Failure::Alloc { .. } => "allocation".into(),
            Failure::Slow { .. } => "slow".into(),
        }
    }

    fn file_prefix(&self) -> &'static str {
        match self {
            Failure::Panic { .. } => "panic",
            Failure::Alloc { .. } => "alloc",
            Failure::Slow { .. } => "slow",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Panic { location, message } => write!(f, "panic at {location}: {message}"),
            Failure::Alloc { peak, limit } => write!(
                f,
                "allocated {peak} bytes at its peak, more than the {limit} allowed"
            ),
            Failure::Slow { took } => write!(f, "took {took:?}, more than {SLOW:?}"),
        }
    }
}

/// A failing input, as found and minimized.
#[derive(Debug)]
pub(crate) struct Found {
    pub failure: Failure,
    pub input: Vec<u8>,
    pub minimized: Vec<u8>,
    /// "corpus file X", "seed N" or "mutant N".
    pub from: String,
}

/// How much fuzzing after the replay.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Budget {
    Time(Duration),
    Inputs(u64),
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub replayed: usize,
    pub inputs: u64,
    pub secs: f64,
    pub signatures: usize,
    pub pool: usize,
}

fn crash_root() -> PathBuf {
    let target = match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(p) if p.is_absolute() => p,
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
    };
    target.join("fuzz-crashes")
}

fn corpus_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name)
}

/// The files of a target's corpus, by name.
fn load_corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let Ok(rd) = std::fs::read_dir(corpus_dir(name)) else {
        return vec![];
    };
    let mut v: Vec<(String, Vec<u8>)> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| e.file_name() != "README.md")
        .map(|e| {
            let data = std::fs::read(e.path()).expect("reading a corpus file");
            (e.file_name().to_string_lossy().into_owned(), data)
        })
        .collect();
    v.sort();
    v
}

fn env_secs() -> f64 {
    match std::env::var("PORTWATCH_FUZZ_SECS") {
        Ok(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite() && *x >= 0.0)
            .unwrap_or_else(|| {
                panic!("PORTWATCH_FUZZ_SECS={s:?}: expected seconds, e.g. 2 or 0.5")
            }),
        Err(_) => DEFAULT_SECS,
    }
}

fn env_seed() -> u64 {
    match std::env::var("PORTWATCH_FUZZ_SEED") {
        Ok(s) => {
            let s = s.trim();
            let v = match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => s.parse(),
            };
            v.unwrap_or_else(|_| panic!("PORTWATCH_FUZZ_SEED={s:?}: expected a number"))
        }
        Err(_) => DEFAULT_SEED,
    }
}

const INTERESTING_BYTES: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'\n', b'\t', b' ', b'0', b'9', b'-', b',', b':', b'/', b'.', b'[',
    b']', b'_', b'a', b'f', b'x', b'F',
];
const INTERESTING_U64: &[u64] = &[
    0,
    1,
    2,
    7,
    8,
    12,
    16,
    24,
    0x7f,
    0x80,
    0xff,
    0x100,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    u64::MAX,
    i64::MAX as u64,
    i64::MIN as u64,
];
const INTERESTING_NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "+1",
    "00",
    "255",
    "256",
    "1023",
    "1024",
    "32767",
    "32768",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "-2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "",
];

impl Target {
    pub(crate) fn new(name: &'static str) -> Target {
        assert!(
            targets::TARGETS.contains(&name) || name == "self-test",
            "fuzz target {name} is not in targets::TARGETS"
        );
        Target {
            name,
            seeds: vec![],
            dict: vec![],
            binary: false,
            max_len: 4096,
            alloc_per_byte: 64,
        }
    }

    /// Inputs built in code, replayed and mutated like the corpus files.
    pub(crate) fn seeds(mut self, seeds: impl IntoIterator<Item = Vec<u8>>) -> Target {
        self.seeds.extend(seeds);
        self
    }

    /// Tokens of the format, inserted and overwritten whole.
    pub(crate) fn dict<T: AsRef<[u8]>>(mut self, tokens: impl IntoIterator<Item = T>) -> Target {
        self.dict
            .extend(tokens.into_iter().map(|t| t.as_ref().to_vec()));
        self
    }

    /// A binary format: more integer and length-field mutations, fewer
    /// textual ones.
    pub(crate) fn binary(mut self) -> Target {
        self.binary = true;
        self
    }

    pub(crate) fn max_len(mut self, n: usize) -> Target {
        self.max_len = n;
        self
    }

    /// Bytes the parser may allocate per input byte, at its peak (on top
    /// of `ALLOC_BASE`).
    pub(crate) fn alloc_per_byte(mut self, n: usize) -> Target {
        self.alloc_per_byte = n;
        self
    }

    fn alloc_limit(&self, len: usize) -> usize {
        ALLOC_BASE + self.alloc_per_byte * len
    }

    /// Replays the corpus and seeds, fuzzes for `PORTWATCH_FUZZ_SECS`, and
    /// fails the test on the first failing input, after writing it out.
    pub(crate) fn run(self, f: impl Fn(&[u8]) -> u64) {
        let secs = env_secs();
        let seed = env_seed();
        match self.fuzz(&f, Budget::Time(Duration::from_secs_f64(secs)), seed) {
            Ok(s) => eprintln!(
                "fuzz {}: {} inputs in {:.1} s ({:.0}/s) after replaying {}; {} signatures, {} in the pool; seed {seed:#x}",
                self.name,
                s.inputs,
                s.secs,
                s.inputs as f64 / s.secs.max(1e-9),
                s.replayed,
                s.signatures,
                s.pool,
            ),
            Err(found) => {
                let saved = self.save(&found);
                let shown = if found.minimized.len() > 2048 {
                    format!("{}… (whole input in the file)", hex(&found.minimized[..2048]))
                } else {
                    hex(&found.minimized)
                };
                panic!(
                    "fuzz {}: {}\n  input ({} bytes, minimized from {}; {}): {shown}\n  {:?}\n  saved as {}\n  once fixed, copy it into portwatch/fuzz/corpus/{}/ as a regression case\n  (seed {seed:#x}, PORTWATCH_FUZZ_SEED reproduces the run)",
                    self.name,
                    found.failure,
                    found.minimized.len(),
                    found.input.len(),
                    found.from,
                    String::from_utf8_lossy(&found.minimized),
                    saved,
                    self.name,
                );
            }
        }
    }

    /// Writes the minimized input (and the original, when it differs) to
    /// target/fuzz-crashes/<target>/; returns where.
    fn save(&self, found: &Found) -> String {
        let dir = crash_root().join(self.name);
        let base = format!(
            "{}-{:016x}",
            found.failure.file_prefix(),
            fnv(&found.minimized)
        );
        let path = dir.join(format!("{base}.bin"));
        let res = std::fs::create_dir_all(&dir)
            .and_then(|_| std::fs::write(&path, &found.minimized))
            .and_then(|_| {
                if found.minimized != found.input {
                    std::fs::write(dir.join(format!("{base}.orig.bin")), &found.input)
                } else {
                    Ok(())
                }
            });
        match res {
            Ok(()) => path.display().to_string(),
            Err(e) => format!("(not saved: {}: {e})", path.display()),
        }
    }

    /// The fuzzing itself; `Err` with the first failing input.
    pub(crate) fn fuzz(
        &self,
        f: &dyn Fn(&[u8]) -> u64,
        budget: Budget,
        seed: u64,
    ) -> Result<Stats, Box<Found>> {
        install_hooks();
        let claim = Claim::new(self.name);
        let mut rng = Rng::new(seed ^ fnv(self.name.as_bytes()));
        let mut starts: Vec<(String, Vec<u8>)> = load_corpus(self.name)
            .into_iter()
            .map(|(n, d)| (format!("corpus file {n}"), d))
            .collect();
        starts.extend(
            self.seeds
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("seed {i}"), s.clone())),
        );
        assert!(
            !starts.is_empty(),
            "fuzz {}: no corpus ({}) and no seeds",
            self.name,
            corpus_dir(self.name).display()
        );
        let max_len = starts
            .iter()
            .map(|(_, s)| s.len())
            .max()
            .unwrap_or(0)
            .max(self.max_len);
        let mut sigs = HashSet::new();
        let fail = |failure: Failure, input: &[u8], from: String| {
            let minimized = self.minimize(f, &claim, input, &failure.key());
            Box::new(Found {
                failure,
                input: input.to_vec(),
                minimized,
                from,
            })
        };
        for (from, input) in &starts {
            match self.check(f, &claim, input) {
                Ok(sig) => {
                    sigs.insert(sig);
                }
                Err(failure) => return Err(fail(failure, input, from.clone())),
            }
        }
        let seeds: Vec<Vec<u8>> = starts.into_iter().map(|(_, s)| s).collect();
        let n_seeds = seeds.len();
        let mut pool = seeds;
        let t0 = Instant::now();
        let mut n = 0u64;
        loop {
            let more = match budget {
                Budget::Time(d) => t0.elapsed() < d,
                Budget::Inputs(k) => n < k,
            };
            if !more {
                break;
            }
            let mut input = pool[rng.below(pool.len())].clone();
            self.mutate(&mut input, &pool, &mut rng, max_len);
            n += 1;
            match self.check(f, &claim, &input) {
                Ok(sig) => {
                    if sigs.insert(sig) {
                        if pool.len() < n_seeds + POOL_MAX {
                            pool.push(input);
                        } else {
                            let i = n_seeds + rng.below(POOL_MAX);
                            pool[i] = input;
                        }
                    }
                }
                Err(failure) => return Err(fail(failure, &input, format!("mutant {n}"))),
            }
        }
        Ok(Stats {
            replayed: n_seeds,
            inputs: n,
            secs: t0.elapsed().as_secs_f64(),
            signatures: sigs.len(),
            pool: pool.len(),
        })
    }

    fn check_once(
        &self,
        f: &dyn Fn(&[u8]) -> u64,
        claim: &Claim,
        input: &[u8],
    ) -> Result<(u64, Duration), Failure> {
        claim.publish(input);
        QUIET.with(|q| q.set(true));
        LAST_PANIC.with(|p| p.borrow_mut().take());
        track_start();
        let t0 = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| f(input)));
        let took = t0.elapsed();
        let peak = track_stop();
        QUIET.with(|q| q.set(false));
        claim.clear();
        let sig = match r {
            Ok(sig) => sig,
            Err(_) => {
                let (location, message) = LAST_PANIC
                    .with(|p| p.borrow_mut().take())
                    .unwrap_or_else(|| ("?".into(), "(panic not seen by the hook)".into()));
                return Err(Failure::Panic { location, message });
            }
        };
        let limit = self.alloc_limit(input.len());
        if peak > limit {
            return Err(Failure::Alloc { peak, limit });
        }
        Ok((sig, took))
    }

    /// Runs one input: its signature, or why it failed. A slow input gets a
    /// second chance (the machine may have been busy).
    fn check(&self, f: &dyn Fn(&[u8]) -> u64, claim: &Claim, input: &[u8]) -> Result<u64, Failure> {
        let (sig, took) = self.check_once(f, claim, input)?;
        if took <= SLOW {
            return Ok(sig);
        }
        let (sig, took) = self.check_once(f, claim, input)?;
        if took <= SLOW {
            return Ok(sig);
        }
        Err(Failure::Slow { took })
    }

    /// The smallest input found (by removing chunks, then by simplifying
    /// bytes) that still fails the same way; at most 2 s of trying.
    fn minimize(
        &self,
        f: &dyn Fn(&[u8]) -> u64,
        claim: &Claim,
        input: &[u8],
        key: &str,
    ) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(2);
        let same = |c: &[u8]| matches!(self.check(f, claim, c), Err(e) if e.key() == key);
        let mut cur = input.to_vec();
        let mut chunk = cur.len().div_ceil(2).max(1);
        while !cur.is_empty() && Instant::now() < deadline {
            let mut i = 0;
            let mut cut = false;
            while i < cur.len() && Instant::now() < deadline {
                let end = (i + chunk).min(cur.len());
                let mut cand = cur[..i].to_vec();
                cand.extend_from_slice(&cur[end..]);
                if same(&cand) {
                    cur = cand;
                    cut = true;
                } else {
                    i += chunk;
                }
            }
            if !cut {
                if chunk == 1 {
                    break;
                }
                chunk = chunk.div_ceil(2);
            }
        }
        // Then plainer bytes: text to '0' or 'a', binary to 0.
        for i in 0..cur.len() {
            if Instant::now() >= deadline {
                break;
            }
            for b in [0u8, b'0', b'a'] {
                if cur[i] == b || (self.binary && b != 0) {
                    continue;
                }
                let mut cand = cur.clone();
                cand[i] = b;
                if same(&cand) {
                    cur = cand;
                    break;
                }
            }
        }
        cur
    }

    fn mutate(&self, buf: &mut Vec<u8>, pool: &[Vec<u8>], rng: &mut Rng, max_len: usize) {
        let rounds = 1 << rng.below(4);
        for _ in 0..rounds {
            self.mutate_once(buf, pool, rng, max_len);
        }
        buf.truncate(max_len);
    }

    fn mutate_once(&self, buf: &mut Vec<u8>, pool: &[Vec<u8>], rng: &mut Rng, max_len: usize) {
        // Weights: text formats lean on numbers and tokens, binary ones on
        // integers and length fields.
        const TEXT: [usize; 14] = [4, 4, 4, 5, 5, 3, 2, 3, 3, 8, 1, 0, 8, 1];
        const BINARY: [usize; 14] = [6, 6, 5, 4, 4, 3, 2, 3, 3, 2, 8, 8, 1, 1];
        let weights = if self.binary { &BINARY } else { &TEXT };
        let mut r = rng.below(weights.iter().sum());
        let op = weights
            .iter()
            .position(|&w| {
                if r < w {
                    true
                } else {
                    r -= w;
                    false
                }
            })
            .unwrap();
        let len = buf.len();
        match op {
            // Flip a bit.
            0 if len > 0 => {
                let i = rng.below(len);
                buf[i] ^= 1 << rng.below(8);
            }
            // Replace a byte, any value.
            1 if len > 0 => {
                let i = rng.below(len);
                buf[i] = rng.next() as u8;
            }
            // Replace a byte with an interesting one.
            2 if len > 0 => {
                let i = rng.below(len);
                buf[i] = *rng.pick(INTERESTING_BYTES);
            }
            // Insert 1..8 bytes, random or interesting.
            3 => {
                let at = rng.below(len + 1);
                let k = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..k)
                    .map(|_| {
                        if rng.one_in(2) {
                            *rng.pick(INTERESTING_BYTES)
                        } else {
                            rng.next() as u8
                        }
                    })
                    .collect();
                buf.splice(at..at, bytes);
            }
            // Delete a range, mostly short.
            4 if len > 0 => {
                let at = rng.below(len);
                let k = if rng.one_in(8) {
                    1 + rng.below(len - at)
                } else {
                    1 + rng.below((len - at).min(16))
                };
                buf.drain(at..at + k);
            }
            // Duplicate a range, 1 to 8 times, somewhere.
            5 if len > 0 => {
                let at = rng.below(len);
                let k = 1 + rng.below((len - at).min(64));
                let chunk = buf[at..at + k].to_vec();
                let to = rng.below(len + 1);
                let times = 1 + rng.below(8);
                let room = max_len.saturating_sub(len) / k.max(1);
                for _ in 0..times.min(room) {
                    buf.splice(to..to, chunk.iter().copied());
                }
            }
            // Truncate.
            6 if len > 0 => buf.truncate(rng.below(len)),
            // Splice: this one's head, another's tail.
            7 => {
                let other = rng.pick(pool);
                let i = rng.below(len + 1);
                let j = rng.below(other.len() + 1);
                buf.truncate(i);
                buf.extend_from_slice(&other[j..]);
            }
            // Insert a piece of another pool entry.
            8 => {
                let other = rng.pick(pool);
                if !other.is_empty() {
                    let a = rng.below(other.len());
                    let k = 1 + rng.below((other.len() - a).min(256));
                    let at = rng.below(len + 1);
                    buf.splice(at..at, other[a..a + k].iter().copied());
                }
            }
            // A dictionary token, inserted or written over.
            9 if !self.dict.is_empty() => {
                let t = rng.pick(&self.dict).clone();
                let at = rng.below(len + 1);
                if rng.one_in(2) {
                    buf.splice(at..at, t);
                } else {
                    let end = (at + t.len()).min(len);
                    buf.splice(at..end, t);
                }
            }
            // An interesting integer, 1/2/4/8 bytes, either endianness.
            10 if len > 0 => {
                let w = 1 << rng.below(4);
                let mut v = *rng.pick(INTERESTING_U64);
                if rng.one_in(4) {
                    v = v.wrapping_add(rng.below(33) as u64).wrapping_sub(16);
                }
                let bytes = if rng.one_in(4) {
                    v.to_be_bytes()[8 - w..].to_vec()
                } else {
                    v.to_le_bytes()[..w].to_vec()
                };
                let at = rng.below(len);
                let end = (at + w).min(len);
                buf[at..end].copy_from_slice(&bytes[..end - at]);
            }
            // A length field: a u32 or u16 (mostly aligned) nudged, doubled,
            // or set to the input's length, 0 or a huge value.
            11 if len >= 2 => {
                let w = if len >= 4 && rng.below(3) > 0 { 4 } else { 2 };
                let mut at = rng.below(len - w + 1);
                if rng.below(4) > 0 {
                    at &= !(w - 1);
                }
                let mut cur = [0u8; 4];
                cur[..w].copy_from_slice(&buf[at..at + w]);
                let v = u32::from_le_bytes(cur) as u64;
                let nv = match rng.below(7) {
                    0 => v.wrapping_add(1 + rng.below(16) as u64),
                    1 => v.wrapping_sub(1 + rng.below(16) as u64),
                    2 => v.wrapping_mul(2),
                    3 => v / 2,
                    4 => (len as u64)
                        .wrapping_add(rng.below(33) as u64)
                        .wrapping_sub(16),
                    5 => 0,
                    _ => *rng.pick(INTERESTING_U64),
                };
                buf[at..at + w].copy_from_slice(&nv.to_le_bytes()[..w]);
            }
            // A decimal or hex number in the text, replaced.
            12 if len > 0 => {
                let at = rng.below(len);
                let digit = |c: u8| c.is_ascii_hexdigit();
                let mut s = at;
                while s > 0 && digit(buf[s - 1]) {
                    s -= 1;
                }
                let mut e = at;
                while e < len && digit(buf[e]) {
                    e += 1;
                }
                let new: Vec<u8> = match rng.below(4) {
                    0 => {
                        let d = 1 + rng.below(24);
                        (0..d).map(|_| b'0' + rng.below(10) as u8).collect()
                    }
                    1 => {
                        let cur = std::str::from_utf8(&buf[s..e])
                            .ok()
                            .and_then(|x| x.parse::<u128>().ok())
                            .unwrap_or(0);
                        let v = if rng.one_in(2) {
                            cur.wrapping_add(1)
                        } else {
                            cur.wrapping_sub(1)
                        };
                        v.to_string().into_bytes()
                    }
                    _ => rng.pick(INTERESTING_NUMBERS).as_bytes().to_vec(),
                };
                buf.splice(s..e, new);
            }
            // Swap two equal-sized ranges.
            13 if len >= 2 => {
                let k = 1 + rng.below((len / 2).min(32));
                let a = rng.below(len - k + 1);
                let b = rng.below(len - k + 1);
                if a + k <= b || b + k <= a {
                    for i in 0..k {
                        buf.swap(a + i, b + i);
                    }
                }
            }
            // An operation that did not fit (empty input): grow it.
            _ => buf.push(*rng.pick(INTERESTING_BYTES)),
        }
        buf.truncate(max_len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_seeded_and_in_range() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..8).map(|_| r.next()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..8).map(|_| r.next()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, {
            let mut r = Rng::new(8);
            (0..8).map(|_| r.next()).collect::<Vec<_>>()
        });
        let mut r = Rng::new(0);
        assert!((0..10_000).all(|_| r.below(7) < 7));
        assert_eq!(r.below(0), 0);
    }

    #[test]
    fn mutants_vary_and_stay_within_the_length() {
        let t = Target::new("self-test").dict(["token"]);
        let pool = vec![b"8080,30000-32767".to_vec(), b"net:[4026531840]".to_vec()];
        let mut rng = Rng::new(1);
        let mut seen = HashSet::new();
        for _ in 0..5000 {
            let mut b = pool[0].clone();
            t.mutate(&mut b, &pool, &mut rng, 32);
            assert!(b.len() <= 32);
            seen.insert(b);
        }
        assert!(seen.len() > 2500, "{}", seen.len());
        let bin = Target::new("self-test").binary();
        let mut b = vec![];
        for _ in 0..1000 {
            bin.mutate(&mut b, &pool, &mut rng, 64);
            assert!(b.len() <= 64);
        }
    }

    fn found(t: &Target, f: &dyn Fn(&[u8]) -> u64) -> Box<Found> {
        t.fuzz(f, Budget::Inputs(200_000), 1)
            .expect_err("the planted bug is found")
    }

    /// A parser that panics on one token is caught, and the input is cut
    /// down to little more than that token.
    #[test]
    fn finds_and_minimizes_a_planted_panic() {
        let t = Target::new("self-test")
            .seeds([b"kubepods/burstable".to_vec()])
            .dict(["pod"]);
        let f = |b: &[u8]| {
            let s = String::from_utf8_lossy(b);
            if s.contains("pod/") {
                panic!("planted");
            }
            s.len() as u64
        };
        let found = found(&t, &f);
        let Failure::Panic { location, message } = &found.failure else {
            panic!("{:?}", found.failure)
        };
        assert_eq!(message, "planted");
        assert!(location.contains("fuzz"), "{location}");
        assert_eq!(found.minimized, b"pod/");
    }

    /// A length field believed without a check is an allocation failure.
    #[test]
    fn finds_a_planted_unbounded_allocation() {
        let t = Target::new("self-test")
            .binary()
            .seeds([vec![4, 0, 0, 0, 1, 2, 3, 4]]);
        let f = |b: &[u8]| {
            if b.len() < 4 {
                return 0;
            }
            let n = u32::from_le_bytes(b[..4].try_into().unwrap()) as usize;
            let v: Vec<u8> = Vec::with_capacity(n);
            v.capacity() as u64 & 1
        };
        let found = found(&t, &f);
        assert!(
            matches!(found.failure, Failure::Alloc { peak, .. } if peak > ALLOC_BASE),
            "{:?}",
            found.failure
        );
        assert_eq!(found.minimized.len(), 4);
    }

    /// A property that does not hold (a failed assert in the target) is a
    /// failure like any panic; the seeds are replayed first.
    #[test]
    fn a_failed_property_on_a_seed_is_reported_as_the_seed() {
        let t = Target::new("self-test").seeds([b"1".to_vec(), b"22".to_vec()]);
        let f = |b: &[u8]| {
            assert!(b.len() < 2, "round trip");
            0
        };
        let e = t.fuzz(&f, Budget::Inputs(0), 1).unwrap_err();
        assert_eq!(e.from, "seed 1");
        assert!(matches!(&e.failure, Failure::Panic { message, .. } if message == "round trip"));
    }

    /// A corpus directory whose name is no target's would never be read.
    #[test]
    fn every_corpus_directory_has_its_target() {
        let root = corpus_dir("");
        for e in std::fs::read_dir(&root).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(
                    targets::TARGETS.contains(&name.as_str()),
                    "{}: no fuzz target {name}",
                    root.display()
                );
            }
        }
    }

    /// Other threads' panics still reach the usual hook (and so libtest).
    #[test]
    fn panics_outside_targets_are_not_swallowed() {
        install_hooks();
        let r = std::thread::spawn(|| {
            LAST_PANIC.with(|p| p.borrow_mut().take());
            let r = catch_unwind(|| panic!("outside"));
            (r.is_err(), LAST_PANIC.with(|p| p.borrow().is_none()))
        })
        .join()
        .unwrap();
        assert_eq!(r, (true, true));
    }
}
