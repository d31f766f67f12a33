//! `disk-pattern`: writes a self-describing pattern on a disk (or an image file) and verifies it,
//! for the testbed's virtio-blk scenarios. It runs in the nested guest, on the virtio disk, and
//! in the emulated host, on the image file behind it.
//!
//! ```text
//! disk-pattern write DEV --seed N --size BYTES [--stop-file PATH] [--no-direct]
//! disk-pattern verify FILE_OR_DEV --seed N --gen G --size BYTES [--direct]
//! disk-pattern bench DEV --mode seqread|seqwrite|randread --block BYTES --seconds S
//!                        [--size BYTES] [--seed N] [--no-direct]
//! ```
//!
//! Every 4 KiB block carries a header (magic, block index, generation, seed) and a body of
//! pseudo-random bytes derived from (seed, block index, generation), so a lost (zeroed),
//! misplaced, stale (older generation) or corrupted block is told apart from a good one.
//!
//! `write` fills `[0, size)` in 1 MiB writes (`O_DIRECT` from an aligned buffer unless
//! `--no-direct`, which also creates a missing file), in passes of generation 1, 2, 3, ...
//! After each pass it looks for the stop file; once it exists (or after one pass, without a
//! stop file) it fsyncs and prints `@@guest pattern-written gen=G bytes=B seed=N`, so every
//! block's final content is generation G.
//!
//! `verify` prints `pattern-verify ok=BOOL blocks=N bad=N first_bad=INDEX|none stale=N zero=N
//! misplaced=N corrupt=N` and exits 0 only when every block is generation G's.
//!
//! `bench` measures throughput for `scripts/bench.sh`: one request of `--block` bytes at a time
//! (queue depth 1), `O_DIRECT` from an aligned buffer unless `--no-direct`, for `--seconds`
//! (the request under way when they run out is finished and counted). `seqread` and `seqwrite`
//! go through the first `--size` bytes (default: the whole device) in order and wrap around;
//! `randread` reads block-aligned offsets drawn uniformly from it (splitmix64 from `--seed`).
//! `seqwrite` writes pseudo-random bytes and ends with an `fdatasync` inside the timed span.
//! It prints `disk-bench mode=M block=B span=BYTES ops=N bytes=N ns=ELAPSED mbps=X iops=Y`
//! (MB/s in 10^6 bytes per second). The pattern is not kept: it overwrites the disk.
//!
//! Exit status: 0 success, 1 a failed verification or an I/O error, 2 bad usage.

use std::alloc::{Layout, alloc_zeroed, dealloc, handle_alloc_error};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

/// The pattern's unit: one header and body.
const BLOCK: usize = 4096;
/// The unit `bench` requests come in: the smallest `O_DIRECT` alignment of a virtio disk.
const SECTOR: u64 = 512;
/// The size of every read and write, and the alignment `O_DIRECT` gets.
const CHUNK: usize = 1 << 20;
/// The header: magic, block index, generation, seed; each a little-endian u64.
const HEADER: usize = 32;
/// The first header word.
const MAGIC: u64 = u64::from_le_bytes(*b"VMMDPAT1");

/// One step of splitmix64: advances `state` and returns the next output.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The body generator's starting state for one block of one generation.
fn body_state(seed: u64, index: u64, generation: u64) -> u64 {
    let mut state = seed;
    let mut state = splitmix64(&mut state) ^ index;
    let mut state = splitmix64(&mut state) ^ generation;
    splitmix64(&mut state)
}

/// Fills `block` (one [`BLOCK`]) with block `index` of generation `generation`.
fn fill_block(block: &mut [u8], seed: u64, index: u64, generation: u64) {
    debug_assert_eq!(block.len(), BLOCK);
    let (header, body) = block.split_at_mut(HEADER);
    for (slot, word) in header
        .chunks_exact_mut(8)
        .zip([MAGIC, index, generation, seed])
    {
        slot.copy_from_slice(&word.to_le_bytes());
    }
    let mut state = body_state(seed, index, generation);
    for slot in body.chunks_exact_mut(8) {
        slot.copy_from_slice(&splitmix64(&mut state).to_le_bytes());
    }
}

/// The header of a block as read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    magic: u64,
    index: u64,
    generation: u64,
    seed: u64,
}

impl Header {
    fn parse(block: &[u8]) -> Self {
        let word = |at: usize| {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&block[at * 8..at * 8 + 8]);
            u64::from_le_bytes(bytes)
        };
        Self {
            magic: word(0),
            index: word(1),
            generation: word(2),
            seed: word(3),
        }
    }
}

/// What a block read back holds, compared with the expected one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockState {
    /// Exactly the expected generation's block.
    Good,
    /// An intact block of this index from an older generation.
    Stale,
    /// All zeroes: never written, or lost.
    Zero,
    /// An intact header of another block index: written to the wrong place.
    Misplaced,
    /// Anything else.
    Corrupt,
}

/// Compares a block read back with block `index` of `generation`; `scratch` is one [`BLOCK`].
fn classify(
    block: &[u8],
    scratch: &mut [u8],
    seed: u64,
    index: u64,
    generation: u64,
) -> BlockState {
    fill_block(scratch, seed, index, generation);
    if block == scratch {
        return BlockState::Good;
    }
    if block.iter().all(|&byte| byte == 0) {
        return BlockState::Zero;
    }
    let header = Header::parse(block);
    if header.magic != MAGIC || header.seed != seed {
        return BlockState::Corrupt;
    }
    if header.index != index {
        return BlockState::Misplaced;
    }
    if header.generation < generation {
        fill_block(scratch, seed, index, header.generation);
        if block == scratch {
            return BlockState::Stale;
        }
    }
    BlockState::Corrupt
}

/// A heap buffer aligned for `O_DIRECT`.
struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (non-zero), aligned to [`BLOCK`].
    fn new(len: usize) -> Self {
        assert!(len > 0, "empty buffer");
        let layout = Layout::from_size_align(len, BLOCK).expect("buffer layout");
        // SAFETY: the layout has a non-zero size (asserted above).
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| handle_alloc_error(layout));
        Self { ptr, layout }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points to `layout.size()` initialised (zeroed at allocation) bytes that
        // this buffer owns until it is dropped; `&self` rules out a concurrent `&mut`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed` with this very layout and is freed only here.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Writes generation `generation` over `[0, size)` of `file`, a chunk at a time from `buf`.
fn write_pass(
    file: &File,
    buf: &mut [u8],
    seed: u64,
    size: u64,
    generation: u64,
) -> io::Result<()> {
    let mut offset = 0u64;
    while offset < size {
        let len = (size - offset).min(buf.len() as u64) as usize;
        let chunk = &mut buf[..len];
        let first = offset / BLOCK as u64;
        for (i, block) in chunk.chunks_exact_mut(BLOCK).enumerate() {
            fill_block(block, seed, first + i as u64, generation);
        }
        file.write_all_at(chunk, offset)?;
        offset += len as u64;
    }
    Ok(())
}

/// Reads up to `buf.len()` bytes at `offset`; zeroes what lies past the end of the file.
fn read_chunk(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    buf[done..].fill(0);
    Ok(())
}

/// The outcome of a verification.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Report {
    blocks: u64,
    bad: u64,
    first_bad: Option<u64>,
    stale: u64,
    zero: u64,
    misplaced: u64,
    corrupt: u64,
}

impl Report {
    fn ok(&self) -> bool {
        self.bad == 0
    }

    fn count(&mut self, index: u64, state: BlockState) {
        self.blocks += 1;
        let counter = match state {
            BlockState::Good => return,
            BlockState::Stale => &mut self.stale,
            BlockState::Zero => &mut self.zero,
            BlockState::Misplaced => &mut self.misplaced,
            BlockState::Corrupt => &mut self.corrupt,
        };
        *counter += 1;
        self.bad += 1;
        self.first_bad.get_or_insert(index);
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pattern-verify ok={} blocks={} bad={} first_bad=",
            self.ok(),
            self.blocks,
            self.bad
        )?;
        match self.first_bad {
            Some(index) => write!(f, "{index}")?,
            None => f.write_str("none")?,
        }
        write!(
            f,
            " stale={} zero={} misplaced={} corrupt={}",
            self.stale, self.zero, self.misplaced, self.corrupt
        )
    }
}

/// Checks every block of `[0, size)` of `file` against generation `generation`.
fn verify(
    file: &File,
    buf: &mut [u8],
    seed: u64,
    size: u64,
    generation: u64,
) -> io::Result<Report> {
    let mut report = Report::default();
    let mut scratch = [0u8; BLOCK];
    let mut offset = 0u64;
    while offset < size {
        let len = (size - offset).min(buf.len() as u64) as usize;
        let chunk = &mut buf[..len];
        read_chunk(file, chunk, offset)?;
        let first = offset / BLOCK as u64;
        for (i, block) in chunk.chunks_exact(BLOCK).enumerate() {
            let index = first + i as u64;
            report.count(
                index,
                classify(block, &mut scratch, seed, index, generation),
            );
        }
        offset += len as u64;
    }
    Ok(report)
}

/// What `bench` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BenchMode {
    /// Reads in order.
    SeqRead,
    /// Writes in order.
    SeqWrite,
    /// Reads at random block-aligned offsets.
    RandRead,
}

impl BenchMode {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "seqread" => Self::SeqRead,
            "seqwrite" => Self::SeqWrite,
            "randread" => Self::RandRead,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::SeqRead => "seqread",
            Self::SeqWrite => "seqwrite",
            Self::RandRead => "randread",
        }
    }

    fn writes(self) -> bool {
        self == Self::SeqWrite
    }
}

/// The offsets of a benchmark's requests: in order with wrap-around, or uniformly random,
/// always whole blocks inside the span.
struct Offsets {
    random: bool,
    block: u64,
    blocks: u64,
    next: u64,
    state: u64,
}

impl Offsets {
    /// Offsets of `block`-byte requests in `[0, blocks * block)`.
    fn new(mode: BenchMode, block: u64, blocks: u64, seed: u64) -> Self {
        Self {
            random: mode == BenchMode::RandRead,
            block,
            blocks: blocks.max(1),
            next: 0,
            state: seed,
        }
    }

    fn next_offset(&mut self) -> u64 {
        let index = if self.random {
            splitmix64(&mut self.state) % self.blocks
        } else {
            let index = self.next;
            self.next = (self.next + 1) % self.blocks;
            index
        };
        index * self.block
    }
}

/// What a benchmark did.
#[derive(Clone, Debug, PartialEq, Eq)]
struct BenchReport {
    mode: BenchMode,
    block: u64,
    span: u64,
    ops: u64,
    elapsed: Duration,
}

impl BenchReport {
    fn bytes(&self) -> u64 {
        self.ops * self.block
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "disk-bench mode={} block={} span={} ops={} bytes={} ns={} mbps={:.1} iops={:.0}",
            self.mode.name(),
            self.block,
            self.span,
            self.ops,
            self.bytes(),
            self.elapsed.as_nanos(),
            self.bytes() as f64 / seconds / 1e6,
            self.ops as f64 / seconds
        )
    }
}

/// Issues `buf.len()`-byte requests to `[0, span)` of `file` one at a time for `duration`.
fn bench(
    file: &File,
    buf: &mut [u8],
    mode: BenchMode,
    span: u64,
    duration: Duration,
    seed: u64,
) -> io::Result<BenchReport> {
    let block = buf.len() as u64;
    if mode.writes() {
        let mut state = seed;
        for slot in buf.chunks_exact_mut(8) {
            slot.copy_from_slice(&splitmix64(&mut state).to_le_bytes());
        }
    }
    let mut offsets = Offsets::new(mode, block, span / block, seed);
    let mut ops = 0;
    let start = Instant::now();
    loop {
        let offset = offsets.next_offset();
        if mode.writes() {
            file.write_all_at(buf, offset)?;
        } else {
            file.read_exact_at(buf, offset)?;
        }
        ops += 1;
        if start.elapsed() >= duration {
            break;
        }
    }
    if mode.writes() {
        file.sync_data()?;
    }
    Ok(BenchReport {
        mode,
        block,
        span: span / block * block,
        ops,
        elapsed: start.elapsed(),
    })
}

/// A parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Command {
    Write {
        path: PathBuf,
        seed: u64,
        size: u64,
        stop_file: Option<PathBuf>,
        direct: bool,
    },
    Verify {
        path: PathBuf,
        seed: u64,
        generation: u64,
        size: u64,
        direct: bool,
    },
    Bench {
        path: PathBuf,
        mode: BenchMode,
        block: u64,
        duration: Duration,
        size: Option<u64>,
        seed: u64,
        direct: bool,
    },
}

const USAGE: &str = "usage: disk-pattern write DEV --seed N --size BYTES [--stop-file PATH] [--no-direct]\n       \
                     disk-pattern verify FILE_OR_DEV --seed N --gen G --size BYTES [--direct]\n       \
                     disk-pattern bench DEV --mode seqread|seqwrite|randread --block BYTES --seconds S \
                     [--size BYTES] [--seed N] [--no-direct]";

/// A byte count: decimal, with an optional K, M or G (binary) suffix.
fn parse_size(text: &str) -> Option<u64> {
    let (digits, shift) = match text.as_bytes().last()? {
        b'K' | b'k' => (&text[..text.len() - 1], 10),
        b'M' | b'm' => (&text[..text.len() - 1], 20),
        b'G' | b'g' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let (mode, rest) = args.split_first().ok_or("no command")?;
    if mode == "bench" {
        return parse_bench(rest);
    }
    let mut path = None;
    let mut seed = None;
    let mut size = None;
    let mut generation = None;
    let mut stop_file = None;
    let mut direct = None;
    let mut words = rest.iter();
    while let Some(word) = words.next() {
        let mut value = |name: &str| {
            words
                .next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let number = |name: &str, text: String| {
            text.parse::<u64>()
                .map_err(|_| format!("{name} wants a number, not {text:?}"))
        };
        match word.as_str() {
            "--seed" => seed = Some(number("--seed", value("--seed")?)?),
            "--gen" if mode == "verify" => {
                generation = Some(number("--gen", value("--gen")?)?);
            }
            "--size" => {
                let text = value("--size")?;
                size = Some(parse_size(&text).ok_or(format!("bad --size {text:?}"))?);
            }
            "--stop-file" if mode == "write" => {
                stop_file = Some(PathBuf::from(value("--stop-file")?))
            }
            "--direct" if mode == "verify" => direct = Some(true),
            "--no-direct" if mode == "write" => direct = Some(false),
            other if !other.starts_with('-') && path.is_none() => path = Some(PathBuf::from(other)),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let path = path.ok_or("no device or file given")?;
    let seed = seed.ok_or("--seed is required")?;
    let size = size.ok_or("--size is required")?;
    if size == 0 || size % BLOCK as u64 != 0 {
        return Err(format!("--size must be a non-zero multiple of {BLOCK}"));
    }
    match mode.as_str() {
        "write" => Ok(Command::Write {
            path,
            seed,
            size,
            stop_file,
            direct: direct.unwrap_or(true),
        }),
        "verify" => Ok(Command::Verify {
            path,
            seed,
            generation: generation.ok_or("--gen is required")?,
            size,
            direct: direct.unwrap_or(false),
        }),
        other => Err(format!("unknown command {other:?}")),
    }
}

/// The arguments of `bench`.
fn parse_bench(args: &[String]) -> Result<Command, String> {
    let mut path = None;
    let mut mode = None;
    let mut block = None;
    let mut duration = None;
    let mut size = None;
    let mut seed = 1;
    let mut direct = true;
    let mut words = args.iter();
    while let Some(word) = words.next() {
        let mut value = |name: &str| {
            words
                .next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match word.as_str() {
            "--mode" => {
                let text = value("--mode")?;
                mode = Some(BenchMode::parse(&text).ok_or(format!("bad --mode {text:?}"))?);
            }
            "--block" => {
                let text = value("--block")?;
                block = Some(parse_size(&text).ok_or(format!("bad --block {text:?}"))?);
            }
            "--seconds" => {
                let text = value("--seconds")?;
                let seconds = text
                    .parse::<f64>()
                    .ok()
                    .filter(|seconds| seconds.is_finite() && *seconds > 0.0 && *seconds < 1e6)
                    .ok_or(format!("bad --seconds {text:?}"))?;
                duration = Some(Duration::from_secs_f64(seconds));
            }
            "--size" => {
                let text = value("--size")?;
                size = Some(parse_size(&text).ok_or(format!("bad --size {text:?}"))?);
            }
            "--seed" => {
                let text = value("--seed")?;
                seed = text
                    .parse()
                    .map_err(|_| format!("--seed wants a number, not {text:?}"))?;
            }
            "--no-direct" => direct = false,
            other if !other.starts_with('-') && path.is_none() => path = Some(PathBuf::from(other)),
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    let block = block.ok_or("--block is required")?;
    if block == 0 || block % SECTOR != 0 || block > 64 * CHUNK as u64 {
        return Err(format!(
            "--block must be a non-zero multiple of {SECTOR}, at most 64 MiB"
        ));
    }
    if size.is_some_and(|size| size < block) {
        return Err("--size must hold at least one --block".into());
    }
    Ok(Command::Bench {
        path: path.ok_or("no device or file given")?,
        mode: mode.ok_or("--mode is required")?,
        block,
        duration: duration.ok_or("--seconds is required")?,
        size,
        seed,
        direct,
    })
}

/// Opens `path`; `O_DIRECT` when `direct`, created when writing without it.
fn open(path: &Path, write: bool, direct: bool) -> io::Result<File> {
    let mut options = OpenOptions::new();
    if write {
        options.write(true).create(!direct).truncate(false);
    } else {
        options.read(true);
    }
    if direct {
        options.custom_flags(libc::O_DIRECT);
    }
    options.open(path)
}

/// Runs a command: the process's exit status, or an I/O error with what failed.
fn run(command: Command) -> Result<bool, String> {
    let buffer = |size: u64| AlignedBuf::new(size.min(CHUNK as u64) as usize);
    match command {
        Command::Write {
            path,
            seed,
            size,
            stop_file,
            direct,
        } => {
            let file = open(&path, true, direct)
                .map_err(|err| format!("cannot open {} for writing: {err}", path.display()))?;
            let mut buf = buffer(size);
            let mut generation = 0;
            loop {
                generation += 1;
                write_pass(&file, &mut buf, seed, size, generation).map_err(|err| {
                    format!(
                        "writing generation {generation} to {}: {err}",
                        path.display()
                    )
                })?;
                if stop_file.as_deref().is_none_or(Path::exists) {
                    break;
                }
            }
            file.sync_all()
                .map_err(|err| format!("fsync of {}: {err}", path.display()))?;
            println!("@@guest pattern-written gen={generation} bytes={size} seed={seed}");
            Ok(true)
        }
        Command::Verify {
            path,
            seed,
            generation,
            size,
            direct,
        } => {
            let file = open(&path, false, direct)
                .map_err(|err| format!("cannot open {}: {err}", path.display()))?;
            let mut buf = buffer(size);
            let report = verify(&file, &mut buf, seed, size, generation)
                .map_err(|err| format!("reading {}: {err}", path.display()))?;
            println!("{report}");
            Ok(report.ok())
        }
        Command::Bench {
            path,
            mode,
            block,
            duration,
            size,
            seed,
            direct,
        } => {
            let mut file = open(&path, mode.writes(), direct)
                .map_err(|err| format!("cannot open {}: {err}", path.display()))?;
            let span = match size {
                Some(size) => size,
                None => file
                    .seek(SeekFrom::End(0))
                    .map_err(|err| format!("cannot size {}: {err}", path.display()))?,
            };
            if span < block {
                return Err(format!(
                    "{} has {span} bytes, less than one --block",
                    path.display()
                ));
            }
            let mut buf = AlignedBuf::new(block as usize);
            let report = bench(&file, &mut buf, mode, span, duration, seed)
                .map_err(|err| format!("{} on {}: {err}", mode.name(), path.display()))?;
            println!("{report}");
            Ok(true)
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse_args(&args) {
        Ok(command) => command,
        Err(err) => {
            eprintln!("disk-pattern: {err}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("disk-pattern: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: u64 = 12345;

    /// A file in the temp directory, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("disk-pattern-{}-{name}", std::process::id()));
            let _ = std::fs::remove_file(&path);
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn block(seed: u64, index: u64, generation: u64) -> Vec<u8> {
        let mut block = vec![0; BLOCK];
        fill_block(&mut block, seed, index, generation);
        block
    }

    /// Writes `blocks` blocks of generation `generation` through `run`, as the CLI does.
    fn written(name: &str, blocks: u64, generation: u64) -> TempFile {
        let file = TempFile::new(name);
        let size = blocks * BLOCK as u64;
        for pass in 1..=generation {
            let handle = open(&file.0, true, false).unwrap();
            let mut buf = AlignedBuf::new(CHUNK);
            write_pass(&handle, &mut buf, SEED, size, pass).unwrap();
        }
        file
    }

    fn verified(file: &TempFile, blocks: u64, generation: u64) -> Report {
        let handle = open(&file.0, false, false).unwrap();
        let mut buf = AlignedBuf::new(CHUNK);
        verify(&handle, &mut buf, SEED, blocks * BLOCK as u64, generation).unwrap()
    }

    fn put_block(file: &TempFile, index: u64, data: &[u8]) {
        let handle = open(&file.0, true, false).unwrap();
        handle.write_all_at(data, index * BLOCK as u64).unwrap();
    }

    fn get_block(file: &TempFile, index: u64) -> Vec<u8> {
        let handle = open(&file.0, false, false).unwrap();
        let mut data = vec![0; BLOCK];
        handle
            .read_exact_at(&mut data, index * BLOCK as u64)
            .unwrap();
        data
    }

    #[test]
    fn a_block_carries_its_header_and_a_body_of_its_own() {
        let a = block(SEED, 7, 3);
        assert_eq!(
            Header::parse(&a),
            Header {
                magic: MAGIC,
                index: 7,
                generation: 3,
                seed: SEED
            }
        );
        assert_eq!(a, block(SEED, 7, 3), "deterministic");
        for other in [block(SEED + 1, 7, 3), block(SEED, 8, 3), block(SEED, 7, 4)] {
            assert_ne!(a[HEADER..], other[HEADER..], "bodies must differ");
        }
        // The body looks random: no run of zero words, and about half the bits set.
        let ones: u32 = a[HEADER..].iter().map(|byte| byte.count_ones()).sum();
        let bits = ((BLOCK - HEADER) * 8) as u32;
        assert!(
            ones > bits * 45 / 100 && ones < bits * 55 / 100,
            "{ones} of {bits}"
        );
    }

    #[test]
    fn classifies_good_stale_zero_misplaced_and_corrupt_blocks() {
        let mut scratch = [0; BLOCK];
        let mut check = |data: &[u8]| classify(data, &mut scratch, SEED, 5, 4);
        assert_eq!(check(&block(SEED, 5, 4)), BlockState::Good);
        assert_eq!(check(&block(SEED, 5, 2)), BlockState::Stale);
        assert_eq!(check(&[0; BLOCK]), BlockState::Zero);
        assert_eq!(check(&block(SEED, 6, 4)), BlockState::Misplaced);
        assert_eq!(check(&block(SEED + 1, 5, 4)), BlockState::Corrupt);
        assert_eq!(check(&block(SEED, 5, 5)), BlockState::Corrupt, "newer");
        let mut flipped = block(SEED, 5, 2);
        flipped[BLOCK - 1] ^= 1;
        assert_eq!(check(&flipped), BlockState::Corrupt, "stale but damaged");
    }

    #[test]
    fn a_written_file_verifies_and_the_report_line_says_so() {
        let file = written("good", 300, 2);
        let report = verified(&file, 300, 2);
        assert!(report.ok());
        assert_eq!(
            report.to_string(),
            "pattern-verify ok=true blocks=300 bad=0 first_bad=none stale=0 zero=0 misplaced=0 corrupt=0"
        );
        // The previous generation no longer matches anywhere.
        let old = verified(&file, 300, 1);
        assert_eq!((old.bad, old.corrupt, old.first_bad), (300, 300, Some(0)));
    }

    #[test]
    fn detects_a_stale_block() {
        let file = written("stale", 300, 2);
        put_block(&file, 270, &block(SEED, 270, 1));
        let report = verified(&file, 300, 2);
        assert!(!report.ok());
        assert_eq!(
            report.to_string(),
            "pattern-verify ok=false blocks=300 bad=1 first_bad=270 stale=1 zero=0 misplaced=0 corrupt=0"
        );
    }

    #[test]
    fn detects_a_missing_block_and_a_short_file() {
        let file = written("zero", 300, 1);
        put_block(&file, 3, &[0; BLOCK]);
        let report = verified(&file, 300, 1);
        assert_eq!((report.bad, report.zero, report.first_bad), (1, 1, Some(3)));
        // Blocks past the end of the file read as zeroes.
        let report = verified(&file, 310, 1);
        assert_eq!((report.blocks, report.bad, report.zero), (310, 11, 11));
    }

    #[test]
    fn detects_swapped_blocks() {
        let file = written("swap", 300, 1);
        let (a, b) = (get_block(&file, 2), get_block(&file, 9));
        put_block(&file, 2, &b);
        put_block(&file, 9, &a);
        let report = verified(&file, 300, 1);
        assert_eq!(
            (report.bad, report.misplaced, report.first_bad),
            (2, 2, Some(2))
        );
    }

    #[test]
    fn detects_a_flipped_bit() {
        let file = written("flip", 300, 1);
        let mut data = get_block(&file, 299);
        data[100] ^= 0x10;
        put_block(&file, 299, &data);
        let report = verified(&file, 300, 1);
        assert_eq!(
            (report.bad, report.corrupt, report.first_bad),
            (1, 1, Some(299))
        );
    }

    #[test]
    fn the_writer_stops_after_the_pass_that_finds_the_stop_file() {
        let file = TempFile::new("cli");
        let stop = TempFile::new("stop");
        std::fs::write(&stop.0, b"").unwrap();
        let write = Command::Write {
            path: file.0.clone(),
            seed: SEED,
            size: 64 * BLOCK as u64,
            stop_file: Some(stop.0.clone()),
            direct: false,
        };
        assert_eq!(run(write), Ok(true));
        let verify = |generation| Command::Verify {
            path: file.0.clone(),
            seed: SEED,
            generation,
            size: 64 * BLOCK as u64,
            direct: false,
        };
        assert_eq!(run(verify(1)), Ok(true));
        assert_eq!(run(verify(2)), Ok(false));
    }

    #[test]
    fn parses_the_command_line() {
        let args = |text: &str| -> Vec<String> { text.split(' ').map(String::from).collect() };
        assert_eq!(
            parse_args(&args(
                "write /dev/vdb --seed 12345 --size 64M --stop-file /tmp/stop"
            )),
            Ok(Command::Write {
                path: "/dev/vdb".into(),
                seed: 12345,
                size: 64 << 20,
                stop_file: Some("/tmp/stop".into()),
                direct: true,
            })
        );
        assert_eq!(
            parse_args(&args(
                "verify data.img --seed 1 --gen 7 --size 67108864 --direct"
            )),
            Ok(Command::Verify {
                path: "data.img".into(),
                seed: 1,
                generation: 7,
                size: 64 << 20,
                direct: true,
            })
        );
        assert!(matches!(
            parse_args(&args("write f --seed 1 --size 4096 --no-direct")),
            Ok(Command::Write { direct: false, .. })
        ));
        for bad in [
            "write f --seed 1 --size 1000",
            "write f --size 4096",
            "write f --seed x --size 4096",
            "verify f --seed 1 --size 4096",
            "verify f --seed 1 --gen 1 --size 4096 --no-direct",
            "write f --seed 1 --gen 1 --size 4096",
            "write f g --seed 1 --size 4096",
            "erase f --seed 1 --size 4096",
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn bench_offsets_stay_whole_blocks_inside_the_span() {
        let mut seq = Offsets::new(BenchMode::SeqRead, 4096, 3, 1);
        let offsets: Vec<u64> = (0..7).map(|_| seq.next_offset()).collect();
        assert_eq!(offsets, [0, 4096, 8192, 0, 4096, 8192, 0]);
        let mut random = Offsets::new(BenchMode::RandRead, 4096, 1000, 1);
        let offsets: Vec<u64> = (0..5000).map(|_| random.next_offset()).collect();
        assert!(offsets.iter().all(|&o| o % 4096 == 0 && o < 1000 * 4096));
        // Spread over the span, not stuck in one place.
        let distinct: std::collections::BTreeSet<_> = offsets.iter().collect();
        assert!(distinct.len() > 900, "{}", distinct.len());
        assert!(offsets.iter().any(|&o| o >= 900 * 4096));
        let mut again = Offsets::new(BenchMode::RandRead, 4096, 1000, 1);
        assert_eq!(again.next_offset(), offsets[0], "seeded");
    }

    #[test]
    fn the_bench_line_has_bytes_ops_time_and_rates() {
        let report = BenchReport {
            mode: BenchMode::RandRead,
            block: 4096,
            span: 1 << 20,
            ops: 5000,
            elapsed: Duration::from_millis(2500),
        };
        assert_eq!(
            report.to_string(),
            "disk-bench mode=randread block=4096 span=1048576 ops=5000 bytes=20480000 \
             ns=2500000000 mbps=8.2 iops=2000"
        );
    }

    #[test]
    fn benches_a_file_for_the_time_asked() {
        let file = written("bench", 64, 1);
        let size = 64 * BLOCK as u64;
        for mode in [BenchMode::SeqRead, BenchMode::RandRead, BenchMode::SeqWrite] {
            let handle = open(&file.0, mode.writes(), false).unwrap();
            let mut buf = AlignedBuf::new(2 * BLOCK);
            let duration = Duration::from_millis(30);
            let report = bench(&handle, &mut buf, mode, size + 100, duration, 7).unwrap();
            assert_eq!((report.mode, report.block, report.span), (mode, 8192, size));
            assert!(report.ops > 0 && report.elapsed >= duration, "{report}");
        }
        // The writes stayed inside the span and replaced the pattern with other bytes.
        assert_eq!(std::fs::metadata(&file.0).unwrap().len(), size);
        assert_eq!(verified(&file, 64, 1).corrupt, 64);
        let command = |mode: &str, size: &str| {
            parse_args(&[
                "bench".into(),
                file.0.display().to_string(),
                "--mode".into(),
                mode.into(),
                "--block".into(),
                "4K".into(),
                "--seconds".into(),
                "0.02".into(),
                "--no-direct".into(),
                "--size".into(),
                size.into(),
            ])
            .unwrap()
        };
        assert_eq!(run(command("seqread", "64K")), Ok(true));
        assert!(
            run(command("randread", "1M")).is_err(),
            "reads past the end fall short"
        );
    }

    #[test]
    fn parses_the_bench_command_line() {
        let args = |text: &str| -> Vec<String> { text.split(' ').map(String::from).collect() };
        assert_eq!(
            parse_args(&args(
                "bench /dev/vdb --mode seqwrite --block 1M --seconds 2.5"
            )),
            Ok(Command::Bench {
                path: "/dev/vdb".into(),
                mode: BenchMode::SeqWrite,
                block: 1 << 20,
                duration: Duration::from_millis(2500),
                size: None,
                seed: 1,
                direct: true,
            })
        );
        assert!(matches!(
            parse_args(&args(
                "bench f --mode randread --block 4096 --seconds 1 --size 8M --seed 9 --no-direct"
            )),
            Ok(Command::Bench {
                size: Some(0x80_0000),
                seed: 9,
                direct: false,
                ..
            })
        ));
        for bad in [
            "bench f --mode seqread --block 4096",
            "bench f --mode seqread --seconds 1",
            "bench f --block 4096 --seconds 1",
            "bench --mode seqread --block 4096 --seconds 1",
            "bench f --mode scan --block 4096 --seconds 1",
            "bench f --mode seqread --block 1000 --seconds 1",
            "bench f --mode seqread --block 0 --seconds 1",
            "bench f --mode seqread --block 4096 --seconds 0",
            "bench f --mode seqread --block 4096 --seconds -1",
            "bench f --mode seqread --block 4096 --seconds nan",
            "bench f --mode seqread --block 8192 --seconds 1 --size 4096",
            "bench f --mode seqread --block 4096 --seconds 1 --direct",
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad}");
        }
    }
}
