//! Delta payloads: a new slot image sent as the blocks that differ from the image an appliance
//! already runs (its *base*), rebuilt on the appliance from its running slot plus the delta.
//!
//! A slot image is a filesystem of 4 KiB blocks (erofs aligns every file's data to a block), so
//! a small release changes a few blocks in place and moves whole files by whole blocks. The
//! encoder looks every target block up among the base's blocks and writes one of three
//! operations per run of blocks:
//!
//! | op | bytes | target bytes |
//! |---|---|---|
//! | `COPY` | shift, count | `count` blocks of the base from the shifted offset |
//! | `ADD` | shift, length, bytes | the base's bytes from the shifted offset, plus `bytes` (byte by byte, modulo 256) |
//! | `DATA` | length, bytes | `bytes` |
//!
//! An op's base offset is the target position it starts at plus a *shift*, written as the
//! difference from the previous op's shift (zigzag LEB128): files after an inserted one all
//! moved by the same amount, so most shifts are written as 0. `ADD` rather than XOR because
//! the fields a package's new files change all over the metadata (inode numbers, the
//! directory entries' inode references, data block addresses) grow by the same amount, which
//! a difference keeps as the same bytes and a XOR does not.
//!
//! `ADD` serves blocks edited in place or moved by less than a block (inode tables and
//! directories, whose entries shift when a file is added before them): against the base bytes
//! the encoder finds most like them, at any byte offset, the difference is mostly zeros, which
//! zstd shrinks to little. A block whose pieces moved by different amounts (entries inserted at
//! several places of it) is cut into several `ADD` and `DATA` ops, each piece against its own
//! base offset ([`segment`]); ops are byte-granular, so the decoder needs nothing for that.
//!
//! A slot image ends in its dm-verity hash tree, which changes whenever any data block does
//! (and whose salt differs in every build): sent as it is, it would be most of a small delta.
//! A `VERITY` op stands for it instead: the decoder rebuilds the superblock and hash tree from
//! the data it has just produced and the signed manifest's verity parameters, and refuses the
//! result unless the data hashes to the signed root hash.
//!
//! The payload is one zstd stream (window at most [`MAX_WINDOW_LOG`], like a full payload) of:
//!
//! ```text
//! "APDELTA2"  u32 LE block size  u64 LE base size  u64 LE target size
//! u64 LE verity offset (0: no VERITY op)
//! op*  (op byte, then LEB128 numbers, then bytes for ADD and DATA; VERITY has none)
//! END  (op byte 0, after exactly target-size bytes)
//! ```
//!
//! The decoder ([`DeltaReader`]) holds one buffer and the zstd window: its memory does not
//! grow with the image. It trusts nothing it reads: every range is checked against the base
//! and target sizes, and the bundle reader checks the rebuilt bytes against the signed
//! manifest's size and sha256 exactly as it checks a full payload, so a wrong base or a
//! corrupted running slot yields a hash mismatch, never a silently different slot.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::bundle::MAX_WINDOW_LOG;
use crate::digest::{HashingWriter, Sha256Hex};
use crate::verity::{self, VerityArea, VerityInfo};
use crate::TrustError;

/// The block size deltas are computed in: erofs's (and the page size of both our boards).
pub const BLOCK_SIZE: u32 = 4096;
const MAGIC: &[u8; 8] = b"APDELTA2";
/// The first format, whose ops held absolute offsets and XORs.
const MAGIC_1: &[u8; 8] = b"APDELTA1";
const OP_END: u8 = 0;
const OP_COPY: u8 = 1;
const OP_ADD: u8 = 2;
const OP_DATA: u8 = 3;
const OP_VERITY: u8 = 4;
const HEADER_LEN: usize = 36;
/// Shifts the encoder remembers for blocks that match no base block exactly.
const RECENT_SHIFTS: usize = 16;

/// Where a delta's base bytes come from: the running slot's partition on an appliance, a file
/// on a build host. Reads are positional, so the base is never copied whole.
pub trait BaseSource: Send {
    /// Names the base in messages, such as `/dev/disk/by-partlabel/rootfs_a`.
    fn describe(&self) -> String;
    /// Fills `buf` from `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// A base held in a file.
pub struct FileBase {
    file: File,
    name: String,
}

impl FileBase {
    /// Opens `path` read-only.
    pub fn open(path: &Path) -> Result<FileBase, TrustError> {
        let file = File::open(path)
            .map_err(|e| TrustError::io(format!("opening delta base {}", path.display()), e))?;
        Ok(FileBase {
            file,
            name: path.display().to_string(),
        })
    }
}

impl BaseSource for FileBase {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
}

/// What [`encode_file`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaStats {
    /// Bytes of the target image.
    pub target_size: u64,
    /// Target bytes taken unchanged from the base.
    pub copied_bytes: u64,
    /// Target bytes sent as differences from base bytes (`ADD`).
    pub diff_bytes: u64,
    /// Target bytes sent as they are.
    pub literal_bytes: u64,
    /// Target bytes the appliance rebuilds (the dm-verity superblock and hash tree).
    pub rebuilt_bytes: u64,
    /// Size of the delta payload.
    pub encoded_size: u64,
    /// Its sha256 (the manifest's `payload.sha256`).
    pub encoded_sha256: Sha256Hex,
}

/// One encoder decision, before runs are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Copy {
        base: u64,
        blocks: u64,
    },
    /// `base` is a byte offset.
    Add {
        base: u64,
        len: u64,
    },
    Data {
        len: u64,
    },
}

/// What the encoder writes: an op, or the rebuilt verity area of this many bytes.
enum Step {
    Op(Op),
    Verity(u64),
}

/// A fast, well-spread 64-bit key of a block; equal keys are confirmed byte for byte.
fn block_key(block: &[u8]) -> u64 {
    let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in block.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = (h ^ u64::from_le_bytes(word)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 29;
    }
    h
}

/// The operations that turn `base` into `target`, one per block, runs merged.
fn plan(base: &[u8], target: &[u8]) -> Vec<Op> {
    let bs = BLOCK_SIZE as usize;
    let base_blocks = base.len() / bs;
    let mut index: HashMap<u64, u64> = HashMap::with_capacity(base_blocks);
    // Later duplicates keep the first block: zero blocks and the like all point at one.
    for i in (0..base_blocks).rev() {
        index.insert(block_key(&base[i * bs..(i + 1) * bs]), i as u64);
    }
    let base_block = |i: u64| &base[i as usize * bs..(i as usize + 1) * bs];
    let exact = |block: &[u8]| {
        index
            .get(&block_key(block))
            .copied()
            .filter(|&b| block.len() == bs && base_block(b) == block)
    };
    let anchors = Anchors::new(base, target, &exact);

    let mut ops: Vec<Op> = Vec::new();
    // Where the base block that lines up with the next target block is, as the last match
    // placed it: files after an inserted one moved by whole blocks.
    let mut shift: i64 = 0;
    // The shifts matches found lately, newest first: a file system's metadata blocks move by
    // another amount than the data around them, and come back to it.
    let mut recent: Vec<i64> = Vec::with_capacity(RECENT_SHIFTS);
    for (t, block) in target.chunks(bs).enumerate() {
        let at = t * bs;
        // The base block in line with this one, if the base has all of its bytes (a short
        // last block of the target lines up with the base's short last block).
        let aligned = u64::try_from(t as i64 + shift)
            .ok()
            .filter(|&b| (b as usize) * bs + block.len() <= base.len());
        let full = block.len() == bs;
        let op = if let Some(b) = aligned.filter(|&b| full && base_block(b) == block) {
            Op::Copy { base: b, blocks: 1 }
        } else if let Some(b) = exact(block) {
            shift = b as i64 - t as i64;
            recent.retain(|&r| r != shift);
            recent.insert(0, shift);
            recent.truncate(RECENT_SHIFTS);
            Op::Copy { base: b, blocks: 1 }
        } else {
            // The base bytes most like this block: in line with it at a recent shift, or where
            // pieces of it were found (an edited block that may also have moved, by any number
            // of bytes). A block can hold pieces that moved by different amounts (an inode
            // table or directory with an entry inserted inside it), so it is cut where another
            // candidate serves better.
            let in_line = std::iter::once(shift)
                .chain(recent.iter().copied())
                .map(|s| at as i64 + s * bs as i64);
            let mut candidates: Vec<u64> = Vec::new();
            for o in in_line
                .chain(anchors.candidates(block))
                .filter_map(|o| u64::try_from(o).ok())
                .filter(|&o| o as usize + block.len() <= base.len())
            {
                if !candidates.contains(&o) {
                    candidates.push(o);
                }
            }
            let pieces = segment(base, block, &candidates);
            // The candidate that serves most of the block sets the shift, if it is in line.
            let mut served: Vec<(u64, usize)> = Vec::new();
            for &(from, len) in &pieces {
                if let Some(o) = from {
                    match served.iter_mut().find(|(c, _)| *c == o) {
                        Some((_, n)) => *n += len,
                        None => served.push((o, len)),
                    }
                }
            }
            if let Some(&(o, _)) = served
                .iter()
                .max_by_key(|&&(o, n)| (n, std::cmp::Reverse(o)))
            {
                if o % bs as u64 == (at % bs) as u64 {
                    shift = (o / bs as u64) as i64 - t as i64;
                }
            }
            let mut done = 0u64;
            for (from, len) in pieces {
                let op = match from {
                    Some(o) => Op::Add {
                        base: o + done,
                        len: len as u64,
                    },
                    None => Op::Data { len: len as u64 },
                };
                push(&mut ops, op);
                done += len as u64;
            }
            continue;
        };
        push(&mut ops, op);
    }
    ops
}

/// Appends `op` to `ops`, merged into the last op where it continues it.
fn push(ops: &mut Vec<Op>, op: Op) {
    match (ops.last_mut(), op) {
        (Some(Op::Copy { base, blocks }), Op::Copy { base: b, .. }) if *base + *blocks == b => {
            *blocks += 1
        }
        (Some(Op::Add { base, len }), Op::Add { base: b, len: l }) if *base + *len == b => {
            *len += l
        }
        (Some(Op::Data { len }), Op::Data { len: l }) => *len += l,
        _ => ops.push(op),
    }
}

/// The weight, in [`segment`]'s path, of a target byte sent as its difference from a base
/// byte it differs from (a byte equal to its base byte weighs nothing: zstd folds zero runs). Measured on two
/// builds of the default recipe, one with curl added: a literal byte compresses much better
/// than the difference of unrelated bytes (file data next to metadata), so weighing literals at a
/// quarter of a miss made the delta 5 % smaller than at three quarters.
const COST_MISS: u32 = 4;
/// Of a target byte sent as it is.
const COST_LITERAL: u32 = 1;
/// Of starting another op (op byte, base offset, length: about ten bytes of op stream).
const COST_SWITCH: u32 = 40;

/// Cuts `block` into pieces, each sent as its difference from the base bytes at one of the `candidates`
/// (offsets into `base` where the whole block would start) or sent as it is, for the least
/// [cost](COST_MISS) (a shortest path over positions and candidates). The pieces in order:
/// the candidate (where the whole block would start in the base; `None` for literal bytes)
/// and the length.
fn segment(base: &[u8], block: &[u8], candidates: &[u64]) -> Vec<(Option<u64>, usize)> {
    let n = block.len();
    // At most 255 states: the literal one is the last.
    let candidates = &candidates[..candidates.len().min(254)];
    let k = candidates.len();
    if n == 0 {
        return Vec::new();
    }
    if k == 0 {
        return vec![(None, n)];
    }
    let states = k + 1;
    let mut cost = vec![0u32; states];
    let mut next = vec![0u32; states];
    // The state each state came from at each position.
    let mut from = vec![0u8; n * states];
    for i in 0..n {
        let (best_state, best) = cost
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|&(s, c)| (c, s))
            .expect("at least one state");
        for s in 0..states {
            let (stay, switch) = (cost[s], best + COST_SWITCH);
            let (prev, c) = if i == 0 || stay <= switch {
                (s, stay)
            } else {
                (best_state, switch)
            };
            let step = if s == k {
                COST_LITERAL
            } else if base[candidates[s] as usize + i] == block[i] {
                0
            } else {
                COST_MISS
            };
            next[s] = c + step;
            from[i * states + s] = prev as u8;
        }
        std::mem::swap(&mut cost, &mut next);
    }
    let mut state = cost
        .iter()
        .copied()
        .enumerate()
        .min_by_key(|&(s, c)| (c, s))
        .expect("at least one state")
        .0;
    let mut path = vec![0u8; n];
    for i in (0..n).rev() {
        path[i] = state as u8;
        state = from[i * states + state] as usize;
    }
    let mut pieces: Vec<(Option<u64>, usize)> = Vec::new();
    let mut start = 0;
    for i in 1..=n {
        if i == n || path[i] != path[start] {
            let s = path[start] as usize;
            pieces.push(((s < k).then(|| candidates[s]), i - start));
            start = i;
        }
    }
    pieces
}

/// Bytes of a piece [`Anchors`] looks up.
const ANCHOR: usize = 32;
/// Every how many bytes of the base a piece is indexed.
const ANCHOR_STRIDE: usize = 32;
/// Byte offsets tried per block, besides the ones in line.
const ANCHOR_CANDIDATES: usize = 16;
/// The rolling hash's multiplier (odd, well mixed).
const ROLL: u64 = 0x100_0000_01b3;

/// Where pieces of a target block appear in the base, at any byte offset: the base blocks no
/// target block copies whole (the ones that were edited or moved by part of a block) indexed
/// every [`ANCHOR_STRIDE`] bytes by a rolling hash of [`ANCHOR`] bytes, which a target block
/// is scanned for at every byte.
struct Anchors<'a> {
    base: &'a [u8],
    index: HashMap<u64, u32>,
    /// `ROLL^(ANCHOR-1)`, to take the oldest byte out of the rolling hash.
    top: u64,
}

impl<'a> Anchors<'a> {
    fn new(base: &'a [u8], target: &[u8], exact: &dyn Fn(&[u8]) -> Option<u64>) -> Self {
        let bs = BLOCK_SIZE as usize;
        let mut copied = vec![false; base.len() / bs];
        for block in target.chunks(bs) {
            if let Some(b) = exact(block) {
                copied[b as usize] = true;
            }
        }
        let mut index = HashMap::new();
        for (b, _) in copied.iter().enumerate().filter(|(_, c)| !**c) {
            for p in (b * bs..(b + 1) * bs - ANCHOR + 1).step_by(ANCHOR_STRIDE) {
                let piece = &base[p..p + ANCHOR];
                if let (Ok(p), false) = (u32::try_from(p), uniform(piece)) {
                    index.entry(roll_hash(piece)).or_insert(p);
                }
            }
        }
        let top = (1..ANCHOR).fold(1u64, |t, _| t.wrapping_mul(ROLL));
        Anchors { base, index, top }
    }

    /// Candidate base offsets for a target block: for each piece of it
    /// found in the base, where the block would start in the base; the most frequent first.
    fn candidates(&self, block: &[u8]) -> Vec<i64> {
        if self.index.is_empty() || block.len() < ANCHOR {
            return Vec::new();
        }
        let mut found: HashMap<i64, u32> = HashMap::new();
        let mut h = roll_hash(&block[..ANCHOR]);
        for k in 0..=block.len() - ANCHOR {
            if k > 0 {
                h = h
                    .wrapping_sub(u64::from(block[k - 1]).wrapping_mul(self.top))
                    .wrapping_mul(ROLL)
                    .wrapping_add(u64::from(block[k + ANCHOR - 1]));
            }
            if let Some(&p) = self.index.get(&h) {
                let p = p as usize;
                let piece = &block[k..k + ANCHOR];
                if &self.base[p..p + ANCHOR] == piece && !uniform(piece) {
                    *found.entry(p as i64 - k as i64).or_default() += 1;
                }
            }
        }
        let mut by_count: Vec<(i64, u32)> = found.into_iter().collect();
        by_count.sort_by_key(|&(o, n)| (std::cmp::Reverse(n), o));
        by_count
            .into_iter()
            .take(ANCHOR_CANDIDATES)
            .map(|(o, _)| o)
            .collect()
    }
}

/// Whether every byte of `piece` is the same (zero runs and padding match anywhere).
fn uniform(piece: &[u8]) -> bool {
    piece.iter().all(|&b| b == piece[0])
}

fn roll_hash(piece: &[u8]) -> u64 {
    piece.iter().fold(0u64, |h, &b| {
        h.wrapping_mul(ROLL).wrapping_add(u64::from(b))
    })
}

fn put_varint(out: &mut (impl Write + ?Sized), mut v: u64) -> io::Result<()> {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            return out.write_all(&[byte]);
        }
        out.write_all(&[byte | 0x80])?;
    }
}

/// [`encode_file_with`] for a target whose dm-verity tree, if it has one appended after its
/// data (as a build's `rootfs.img`), is found by reading it.
pub fn encode_file(
    base: &Path,
    target: &Path,
    out: &Path,
    level: i32,
) -> Result<DeltaStats, TrustError> {
    let mut file = File::open(target)
        .map_err(|e| TrustError::io(format!("opening {}", target.display()), e))?;
    let verity = verity::read_appended(&mut file).ok();
    encode_file_with(base, target, out, level, verity.as_ref())
}

/// Writes the delta that rebuilds `target` from `base` into `out`, as zstd at `level` (1 to
/// 19), and returns what it holds. With `verity` (the target's parameters, as its manifest
/// records them) the hash tree is left for the appliance to rebuild. Build-host only: both
/// images are read into memory. Deterministic: the output depends only on the two images,
/// the level and the zstd version.
pub fn encode_file_with(
    base: &Path,
    target: &Path,
    out: &Path,
    level: i32,
    verity: Option<&VerityInfo>,
) -> Result<DeltaStats, TrustError> {
    if !(1..=19).contains(&level) {
        return Err(TrustError::malformed(
            format!("zstd level {level}"),
            "use a level from 1 to 19; higher levels need windows larger than appliances decode",
        ));
    }
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| TrustError::io(format!("reading {}", p.display()), e))
    };
    let (base_bytes, target_bytes) = (read(base)?, read(target)?);
    // The ops before the tree, the tree (rebuilt on the appliance), the ops after it.
    let steps: Vec<Step> = match verity {
        Some(v) => {
            let start = usize::try_from(v.hash_offset).unwrap_or(usize::MAX);
            let end = usize::try_from(v.hash_offset + verity::hash_tree_size(v.data_size()))
                .unwrap_or(usize::MAX);
            if end > target_bytes.len() {
                return Err(TrustError::malformed(
                    target.display().to_string(),
                    format!(
                        "its verity tree would end at {end}, past its {} bytes; give the \
                         parameters of this image",
                        target_bytes.len()
                    ),
                ));
            }
            let mut steps: Vec<Step> = plan(&base_bytes, &target_bytes[..start])
                .into_iter()
                .map(Step::Op)
                .collect();
            steps.push(Step::Verity((end - start) as u64));
            steps.extend(
                plan(&base_bytes, &target_bytes[end..])
                    .into_iter()
                    .map(Step::Op),
            );
            steps
        }
        None => plan(&base_bytes, &target_bytes)
            .into_iter()
            .map(Step::Op)
            .collect(),
    };
    let verity_offset = verity.map_or(0, |v| v.hash_offset);

    let file =
        File::create(out).map_err(|e| TrustError::io(format!("creating {}", out.display()), e))?;
    let write_err = |e| TrustError::io(format!("writing the delta {}", out.display()), e);
    let mut z = zstd::stream::write::Encoder::new(HashingWriter::new(BufWriter::new(file)), level)
        .map_err(write_err)?;
    z.include_checksum(true).map_err(write_err)?;
    z.window_log(MAX_WINDOW_LOG).map_err(write_err)?;
    z.long_distance_matching(true).map_err(write_err)?;

    let mut stats = DeltaStats {
        target_size: target_bytes.len() as u64,
        copied_bytes: 0,
        diff_bytes: 0,
        literal_bytes: 0,
        rebuilt_bytes: 0,
        encoded_size: 0,
        encoded_sha256: Sha256Hex::digest(b""),
    };
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&BLOCK_SIZE.to_le_bytes());
    header.extend_from_slice(&(base_bytes.len() as u64).to_le_bytes());
    header.extend_from_slice(&(target_bytes.len() as u64).to_le_bytes());
    header.extend_from_slice(&verity_offset.to_le_bytes());
    z.write_all(&header).map_err(write_err)?;
    let bs = u64::from(BLOCK_SIZE);
    let mut pos = 0usize;
    // The last op's shift (base offset minus target position).
    let mut shift: i64 = 0;
    let mut put_shift = |z: &mut dyn Write, base: u64, pos: usize| {
        let s = base as i64 - pos as i64;
        let d = s.wrapping_sub(shift);
        shift = s;
        put_varint(z, ((d << 1) ^ (d >> 63)) as u64)
    };
    for step in steps {
        let op = match step {
            Step::Verity(len) => {
                z.write_all(&[OP_VERITY]).map_err(write_err)?;
                stats.rebuilt_bytes += len;
                pos += len as usize;
                continue;
            }
            Step::Op(op) => op,
        };
        match op {
            Op::Copy { base, blocks } => {
                z.write_all(&[OP_COPY]).map_err(write_err)?;
                put_shift(&mut z, base * bs, pos).map_err(write_err)?;
                put_varint(&mut z, blocks).map_err(write_err)?;
                stats.copied_bytes += blocks * bs;
                pos += (blocks * bs) as usize;
            }
            Op::Add { base, len } => {
                z.write_all(&[OP_ADD]).map_err(write_err)?;
                put_shift(&mut z, base, pos).map_err(write_err)?;
                put_varint(&mut z, len).map_err(write_err)?;
                let from = base as usize;
                let diff: Vec<u8> = target_bytes[pos..pos + len as usize]
                    .iter()
                    .zip(&base_bytes[from..from + len as usize])
                    .map(|(t, b)| t.wrapping_sub(*b))
                    .collect();
                z.write_all(&diff).map_err(write_err)?;
                stats.diff_bytes += len;
                pos += len as usize;
            }
            Op::Data { len } => {
                z.write_all(&[OP_DATA]).map_err(write_err)?;
                put_varint(&mut z, len).map_err(write_err)?;
                z.write_all(&target_bytes[pos..pos + len as usize])
                    .map_err(write_err)?;
                stats.literal_bytes += len;
                pos += len as usize;
            }
        }
    }
    z.write_all(&[OP_END]).map_err(write_err)?;
    let (buffered, sha256, size) = z.finish().map_err(write_err)?.finish();
    let file = buffered
        .into_inner()
        .map_err(|e| write_err(e.into_error()))?;
    file.sync_all().map_err(write_err)?;
    stats.encoded_size = size;
    stats.encoded_sha256 = sha256;
    Ok(stats)
}

/// Rebuilds the target of the delta `delta` from `base` into `out`; returns its size. `verity`
/// is the target's dm-verity parameters (its manifest's, or [`verity::read_appended`] of the
/// target), needed when the delta leaves the tree to be rebuilt. For build hosts and tests; an
/// appliance goes through the bundle reader, which checks the result against the manifest.
pub fn decode_file(
    base: &Path,
    delta: &Path,
    out: &Path,
    verity: Option<&VerityInfo>,
) -> Result<u64, TrustError> {
    let source = FileBase::open(base)?;
    let base_size = std::fs::metadata(base)
        .map_err(|e| TrustError::io(format!("reading {}", base.display()), e))?
        .len();
    let file =
        File::open(delta).map_err(|e| TrustError::io(format!("opening {}", delta.display()), e))?;
    let mut z = zstd::stream::read::Decoder::new(file)
        .map_err(|e| TrustError::io(format!("reading {}", delta.display()), e))?;
    z.window_log_max(MAX_WINDOW_LOG)
        .map_err(|e| TrustError::io(format!("reading {}", delta.display()), e))?;
    let mut reader = DeltaReader::new(z, Box::new(source), base_size, verity.cloned());
    let mut w = BufWriter::new(
        File::create(out).map_err(|e| TrustError::io(format!("creating {}", out.display()), e))?,
    );
    let n = io::copy(&mut reader, &mut w).map_err(|e| {
        reader.take_error().unwrap_or_else(|| {
            TrustError::io(
                format!("rebuilding {} from {}", out.display(), delta.display()),
                e,
            )
        })
    })?;
    w.flush()
        .map_err(|e| TrustError::io(format!("writing {}", out.display()), e))?;
    Ok(n)
}

/// The operation being played back.
#[derive(Debug, Clone, Copy)]
enum Playing {
    Header,
    Between,
    Copy {
        offset: u64,
        left: u64,
    },
    Add {
        offset: u64,
        left: u64,
    },
    Data {
        left: u64,
    },
    /// Serving the rebuilt verity area from `at`.
    Area {
        at: usize,
    },
    Ended,
}

/// Reads the target image of a delta: the decoded op stream `ops` played against `base`.
/// Errors are `io::Error`s for the reader stack; [`DeltaReader::take_error`] gives the typed one.
pub struct DeltaReader<R> {
    ops: R,
    base: Box<dyn BaseSource>,
    base_size: u64,
    target_size: u64,
    produced: u64,
    playing: Playing,
    /// The last op's shift (its base offset minus its target position).
    shift: i64,
    scratch: Vec<u8>,
    error: Option<TrustError>,
    /// The target's verity parameters, from the signed manifest.
    verity: Option<VerityInfo>,
    /// The verity area being built from the bytes produced, then the built one.
    building: Option<VerityArea>,
    area: Vec<u8>,
}

impl<R: Read> DeltaReader<R> {
    /// A reader of the image `ops` (the decoded payload) describes, taking unchanged bytes
    /// from `base`, whose usable length is `base_len` (the partition may be larger than the
    /// image it holds; the delta's own base size must fit in it). `verity` is the target's
    /// dm-verity parameters as the signed manifest gives them; a delta that leaves the tree
    /// to be rebuilt needs them.
    pub fn new(
        ops: R,
        base: Box<dyn BaseSource>,
        base_len: u64,
        verity: Option<VerityInfo>,
    ) -> Self {
        DeltaReader {
            ops,
            base,
            base_size: base_len,
            target_size: 0,
            produced: 0,
            playing: Playing::Header,
            shift: 0,
            scratch: Vec::new(),
            error: None,
            verity,
            building: None,
            area: Vec::new(),
        }
    }

    /// Bytes of memory the rebuilt verity area takes (the rest of the decoder's memory is
    /// fixed: one scratch buffer and the zstd window).
    pub fn area_bytes(&self) -> usize {
        self.area.capacity()
    }

    fn bad(&mut self, reason: impl Into<String>) -> io::Error {
        let reason = reason.into();
        self.error = Some(TrustError::malformed(
            "delta payload",
            format!("{reason}; make the delta again (cargo xtask bundle --from)"),
        ));
        self.playing = Playing::Ended;
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("delta payload: {reason}"),
        )
    }

    fn read_base(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if let Err(e) = self.base.read_exact_at(buf, offset) {
            let what = format!(
                "reading {} bytes at {offset} of the delta's base {}",
                buf.len(),
                self.base.describe()
            );
            let message = format!("{what}: {e}");
            self.error = Some(TrustError::io(what, e));
            self.playing = Playing::Ended;
            return Err(io::Error::other(message));
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` op-stream bytes; an early end is a truncated delta.
    fn ops_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        match self.ops.read_exact(buf) {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(self.bad("the operations end before the image does"))
            }
            other => other,
        }
    }

    fn varint(&mut self) -> io::Result<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let mut b = [0u8];
            self.ops_exact(&mut b)?;
            v |= u64::from(b[0] & 0x7f) << shift;
            if b[0] & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.bad("a number is longer than 64 bits"))
    }

    fn header(&mut self) -> io::Result<()> {
        let mut h = [0u8; HEADER_LEN];
        self.ops_exact(&mut h)?;
        if &h[..8] == MAGIC_1 {
            return Err(self.bad(
                "it is in the first delta format (APDELTA1), which this updater no longer \
                 reads; make the delta again with this release's `aperture bundle --from`",
            ));
        }
        if &h[..8] != MAGIC {
            return Err(self.bad("it does not start with APDELTA2"));
        }
        let block = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
        let base = u64::from_le_bytes(h[12..20].try_into().expect("8 bytes"));
        self.target_size = u64::from_le_bytes(h[20..28].try_into().expect("8 bytes"));
        let verity_offset = u64::from_le_bytes(h[28..36].try_into().expect("8 bytes"));
        if block != BLOCK_SIZE {
            return Err(self.bad(format!(
                "block size {block}, but this reader knows {BLOCK_SIZE}"
            )));
        }
        if base > self.base_size {
            return Err(self.bad(format!(
                "its base is {base} bytes but {} holds {}",
                self.base.describe(),
                self.base_size
            )));
        }
        self.base_size = base;
        if verity_offset != 0 {
            let Some(info) = self.verity.take() else {
                return Err(self.bad(
                    "it leaves the verity tree to be rebuilt, but the image has no verity \
                     parameters",
                ));
            };
            if info.hash_offset != verity_offset || verity_offset > self.target_size {
                return Err(self.bad(format!(
                    "its verity tree starts at {verity_offset}, but the signed parameters say {}",
                    info.hash_offset
                )));
            }
            match VerityArea::new(&info) {
                Ok(area) => self.building = Some(area),
                Err(e) => return Err(self.bad(e.to_string())),
            }
        }
        self.playing = Playing::Between;
        Ok(())
    }

    /// Reads the next op; checks its range against the base and what is left of the target.
    fn next_op(&mut self) -> io::Result<()> {
        let mut op = [0u8];
        self.ops_exact(&mut op)?;
        let left = self.target_size - self.produced;
        let bs = u64::from(BLOCK_SIZE);
        self.playing = match op[0] {
            OP_END => {
                if left != 0 {
                    return Err(self.bad(format!("it ends {left} bytes before the image does")));
                }
                let mut extra = [0u8];
                if self.ops.read(&mut extra)? != 0 {
                    return Err(self.bad("bytes follow its end"));
                }
                Playing::Ended
            }
            OP_COPY | OP_ADD => {
                let zigzag = self.varint()?;
                let step = ((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64);
                let shift = self.shift.wrapping_add(step);
                self.shift = shift;
                let len = if op[0] == OP_COPY {
                    self.varint()?.checked_mul(bs)
                } else {
                    Some(self.varint()?)
                };
                let offset = u64::try_from(i128::from(self.produced) + i128::from(shift)).ok();
                let (Some(len), Some(offset)) = (len, offset) else {
                    return Err(self.bad("an operation's range overflows"));
                };
                if len == 0 || len > left {
                    return Err(self.bad(format!(
                        "an operation of {len} bytes where {left} are left of the image"
                    )));
                }
                if offset
                    .checked_add(len)
                    .is_none_or(|end| end > self.base_size)
                {
                    return Err(self.bad(format!(
                        "an operation reads {len} bytes at {offset} of a {}-byte base",
                        self.base_size
                    )));
                }
                if op[0] == OP_COPY {
                    Playing::Copy { offset, left: len }
                } else {
                    Playing::Add { offset, left: len }
                }
            }
            OP_VERITY => {
                let Some(building) = self.building.take() else {
                    return Err(self.bad("a VERITY op without a verity offset, or a second one"));
                };
                if self.produced != building.hash_offset() {
                    return Err(self.bad(format!(
                        "the verity tree is placed at {}, not at its offset {}",
                        self.produced,
                        building.hash_offset()
                    )));
                }
                match building.finish() {
                    Ok(area) if area.len() as u64 <= left => self.area = area,
                    Ok(area) => {
                        return Err(self.bad(format!(
                            "a verity area of {} bytes where {left} are left of the image",
                            area.len()
                        )))
                    }
                    Err(e) => {
                        // The data does not hash to the signed root: the base was not what it
                        // claimed, or the delta was made from other images.
                        self.error = Some(TrustError::malformed(
                            format!(
                                "the image rebuilt from the delta and {}",
                                self.base.describe()
                            ),
                            match e {
                                TrustError::HashMismatch {
                                    expected, actual, ..
                                } => format!(
                                    "its data hashes to verity root {actual}, not the signed \
                                     {expected}: the base's bytes are not the release the delta \
                                     was made from (a damaged or altered slot); install the full \
                                     bundle"
                                ),
                                other => format!("{other}; install the full bundle"),
                            },
                        ));
                        self.playing = Playing::Ended;
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "the rebuilt data does not match the signed verity root hash",
                        ));
                    }
                }
                Playing::Area { at: 0 }
            }
            OP_DATA => {
                let len = self.varint()?;
                if len == 0 || len > left {
                    return Err(self.bad(format!(
                        "data of {len} bytes where {left} are left of the image"
                    )));
                }
                Playing::Data { left: len }
            }
            other => return Err(self.bad(format!("unknown operation {other}"))),
        };
        Ok(())
    }
}

impl<R: Read> Read for DeltaReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.playing {
                Playing::Header => self.header()?,
                Playing::Between => self.next_op()?,
                Playing::Ended => {
                    if self.error.is_some() {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "the delta payload failed earlier",
                        ));
                    }
                    return Ok(0);
                }
                Playing::Copy { offset, left } => {
                    let n = buf.len().min(left as usize);
                    self.read_base(&mut buf[..n], offset)?;
                    self.advance(&buf[..n])?;
                    return Ok(n);
                }
                Playing::Area { at } => {
                    let n = buf.len().min(self.area.len() - at);
                    buf[..n].copy_from_slice(&self.area[at..at + n]);
                    self.produced += n as u64;
                    self.playing = if at + n == self.area.len() {
                        self.area = Vec::new();
                        Playing::Between
                    } else {
                        Playing::Area { at: at + n }
                    };
                    return Ok(n);
                }
                Playing::Add { offset, left } => {
                    let n = buf.len().min(left as usize);
                    let n = self.ops.read(&mut buf[..n])?;
                    if n == 0 {
                        return Err(self.bad("the operations end inside an ADD"));
                    }
                    let mut scratch = std::mem::take(&mut self.scratch);
                    scratch.resize(n, 0);
                    let read = self.read_base(&mut scratch, offset);
                    for (b, s) in buf[..n].iter_mut().zip(&scratch) {
                        *b = b.wrapping_add(*s);
                    }
                    self.scratch = scratch;
                    read?;
                    self.advance(&buf[..n])?;
                    return Ok(n);
                }
                Playing::Data { left } => {
                    let n = buf.len().min(left as usize);
                    let n = self.ops.read(&mut buf[..n])?;
                    if n == 0 {
                        return Err(self.bad("the operations end inside data"));
                    }
                    self.advance(&buf[..n])?;
                    return Ok(n);
                }
            }
        }
    }
}

impl<R> DeltaReader<R> {
    /// The op stream underneath.
    pub fn get_ref(&self) -> &R {
        &self.ops
    }

    /// The op stream underneath.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.ops
    }

    /// The typed error behind the last failed read, if the delta (not its transport) was at
    /// fault or the base could not be read.
    pub fn take_error(&mut self) -> Option<TrustError> {
        self.error.take()
    }

    /// Counts `bytes` as produced (and hashed into the verity tree being built) and moves on.
    fn advance(&mut self, bytes: &[u8]) -> io::Result<()> {
        let n = bytes.len() as u64;
        if let Some(building) = &mut self.building {
            let before = building.hash_offset().saturating_sub(self.produced);
            let fed = &bytes[..bytes
                .len()
                .min(usize::try_from(before).unwrap_or(usize::MAX))];
            if let Err(e) = building.update(fed) {
                self.error = Some(e);
                self.playing = Playing::Ended;
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "building the verity tree failed",
                ));
            }
        }
        self.produced += n;
        self.playing = match self.playing {
            Playing::Copy { offset, left } if left > n => Playing::Copy {
                offset: offset + n,
                left: left - n,
            },
            Playing::Add { offset, left } if left > n => Playing::Add {
                offset: offset + n,
                left: left - n,
            },
            Playing::Data { left } if left > n => Playing::Data { left: left - n },
            _ => Playing::Between,
        };
        Ok(())
    }
}

/// Reads the whole of `r` (for tests and small tools).
#[cfg(test)]
fn read_all(mut r: impl Read) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    r.read_to_end(&mut v)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pseudo-random image of `blocks` blocks, every block different.
    fn image(blocks: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..blocks * BLOCK_SIZE as usize)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn round_trip(base: &[u8], target: &[u8]) -> (DeltaStats, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let (b, t, d, o) = (
            dir.path().join("base"),
            dir.path().join("target"),
            dir.path().join("delta"),
            dir.path().join("out"),
        );
        std::fs::write(&b, base).unwrap();
        std::fs::write(&t, target).unwrap();
        let stats = encode_file(&b, &t, &d, 19).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().len(), stats.encoded_size);
        let n = decode_file(&b, &d, &o, None).unwrap();
        assert_eq!(n, target.len() as u64);
        let again = encode_file(&b, &t, &dir.path().join("again"), 19).unwrap();
        assert_eq!(again, stats, "the same images give the same delta");
        (stats, std::fs::read(o).unwrap())
    }

    #[test]
    fn moved_edited_and_new_blocks_rebuild_exactly_and_cost_little() {
        let base = image(512, 7);
        let bs = BLOCK_SIZE as usize;
        // Insert 3 new blocks after block 100 (everything after moves), edit 10 bytes of block
        // 300 in place, and end with a partial block.
        let mut target = base[..100 * bs].to_vec();
        target.extend(image(3, 99));
        target.extend_from_slice(&base[100 * bs..]);
        let edit = 303 * bs + 17;
        for b in &mut target[edit..edit + 10] {
            *b = !*b;
        }
        target.extend_from_slice(b"tail");
        let (stats, out) = round_trip(&base, &target);
        assert_eq!(out, target);
        assert_eq!(stats.copied_bytes, (512 - 1) as u64 * bs as u64);
        assert_eq!(stats.diff_bytes, bs as u64);
        assert_eq!(stats.literal_bytes, 3 * bs as u64 + 4);
        // Three random blocks do not compress; the rest is a few dozen bytes.
        assert!(stats.encoded_size < 3 * bs as u64 + 400, "{stats:?}");
    }

    #[test]
    fn bytes_inserted_inside_a_block_cost_about_their_own_size() {
        // Ten blocks (directory entries, inode tables) shift by 100 bytes when 100 bytes are
        // inserted into the first; the data after them is in line again.
        let bs = BLOCK_SIZE as usize;
        let base = image(64, 11);
        let mut target = base[..10 * bs + 50].to_vec();
        target.extend(image(1, 12).into_iter().take(100));
        target.extend_from_slice(&base[10 * bs + 50..20 * bs - 100]);
        target.extend_from_slice(&base[20 * bs..]);
        assert_eq!(target.len(), base.len());
        let (stats, out) = round_trip(&base, &target);
        assert_eq!(out, target);
        assert_eq!(stats.copied_bytes, 54 * bs as u64);
        // Ten blocks of random bytes would not compress at all.
        assert!(stats.encoded_size < 1500, "{stats:?}");
    }

    #[test]
    fn entries_inserted_at_several_places_of_one_block_cost_about_their_own_size() {
        // A directory block gains three entries at three places (a package adds files): each
        // piece of the block moved by another amount, and the blocks after it by their sum.
        let bs = BLOCK_SIZE as usize;
        let base = image(32, 21);
        let new = image(1, 22);
        let mut target = base[..5 * bs].to_vec();
        let mut from = 5 * bs;
        for (at, len) in [(5 * bs + 700, 24), (5 * bs + 1900, 40), (5 * bs + 3100, 16)] {
            target.extend_from_slice(&base[from..at]);
            target.extend_from_slice(&new[at - 5 * bs..at - 5 * bs + len]);
            from = at;
        }
        target.extend_from_slice(&base[from..]);
        let (stats, out) = round_trip(&base, &target);
        assert_eq!(out, target);
        // 80 new bytes and four pieces; one ADD against a single offset would send more than
        // half of the block's bytes differing.
        assert!(stats.encoded_size < 80 + 300, "{stats:?}");
    }

    #[test]
    fn a_block_is_cut_where_another_candidate_serves_better() {
        let base: Vec<u8> = (0..3 * 4096u32).map(|i| (i * 7 + i / 13) as u8).collect();
        let mut block = base[4096..6096].to_vec();
        block.extend_from_slice(&[0xee; 48]);
        block.extend_from_slice(&base[8000..8000 + 4096 - 2048]);
        let pieces = segment(&base, &block, &[4096, 8000 - 2048, 0]);
        assert_eq!(
            pieces,
            vec![(Some(4096), 2000), (None, 48), (Some(8000 - 2048), 2048)],
            "two moved pieces and the new bytes between them"
        );
        // A few changed bytes are not worth an op of their own.
        let mut edited = base[..4096].to_vec();
        edited[100] ^= 1;
        edited[3000] ^= 1;
        assert_eq!(segment(&base, &edited, &[0, 4096]), vec![(Some(0), 4096)]);
        assert_eq!(segment(&base, &edited, &[]), vec![(None, 4096)]);
    }

    #[test]
    fn a_verity_image_sends_no_tree_and_rebuilds_it_checked() {
        use std::fs::OpenOptions;
        let dir = tempfile::tempdir().unwrap();
        let bs = BLOCK_SIZE as usize;
        let with_tree = |name: &str, data: &[u8], salt: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, data).unwrap();
            let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
            let info = verity::append_hash_tree(&mut f, data.len() as u64, salt, [1; 16]).unwrap();
            (p, info)
        };
        let base_data = image(400, 3);
        let mut target_data = base_data.clone();
        target_data[10 * bs..11 * bs].copy_from_slice(&image(1, 5));
        // Every build has its own salt, so every hash block of the tree differs.
        let (base, _) = with_tree("base", &base_data, b"one");
        let (target, info) = with_tree("target", &target_data, b"two");
        let delta = dir.path().join("delta");
        let stats = encode_file(&base, &target, &delta, 19).unwrap();
        let tree = verity::hash_tree_size(target_data.len() as u64);
        assert_eq!(stats.rebuilt_bytes, tree);
        assert_eq!(stats.literal_bytes, bs as u64);
        assert!(stats.encoded_size < bs as u64 + 300, "{stats:?}");

        let out = dir.path().join("out");
        decode_file(&base, &delta, &out, Some(&info)).unwrap();
        assert_eq!(
            std::fs::read(&out).unwrap(),
            std::fs::read(&target).unwrap()
        );

        // Without the parameters, or with another root hash, it is refused by name.
        let err = decode_file(&base, &delta, &out, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no verity parameters"), "{err}");
        let mut wrong = info.clone();
        wrong.root_hash = Sha256Hex::digest(b"x");
        let err = decode_file(&base, &delta, &out, Some(&wrong))
            .unwrap_err()
            .to_string();
        assert!(err.contains("verity root"), "{err}");
    }

    #[test]
    fn unrelated_images_and_empty_ones_round_trip() {
        let (a, b) = (image(20, 1), image(30, 2));
        assert_eq!(round_trip(&a, &b).1, b);
        assert_eq!(round_trip(&[], &b).1, b);
        assert_eq!(round_trip(&a, &[]).1, Vec::<u8>::new());
    }

    fn ops_stream(base_size: u64, target_size: u64, ops: &[u8]) -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&BLOCK_SIZE.to_le_bytes());
        v.extend_from_slice(&base_size.to_le_bytes());
        v.extend_from_slice(&target_size.to_le_bytes());
        v.extend_from_slice(&0u64.to_le_bytes());
        v.extend_from_slice(ops);
        v
    }

    struct MemBase(Vec<u8>);
    impl BaseSource for MemBase {
        fn describe(&self) -> String {
            "memory".into()
        }
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let o = offset as usize;
            buf.copy_from_slice(&self.0[o..o + buf.len()]);
            Ok(())
        }
    }

    fn play(base: Vec<u8>, stream: Vec<u8>) -> Result<Vec<u8>, String> {
        let len = base.len() as u64;
        let mut r = DeltaReader::new(&stream[..], Box::new(MemBase(base)), len, None);
        read_all(&mut r).map_err(|e| {
            r.take_error()
                .map(|t| t.to_string())
                .unwrap_or(e.to_string())
        })
    }

    #[test]
    fn hostile_operations_are_refused_by_name() {
        let base = vec![5u8; 2 * BLOCK_SIZE as usize];
        let bs = u64::from(BLOCK_SIZE);
        let cases: Vec<(Vec<u8>, &str)> = vec![
            // A copy past the end of the base.
            (
                // Shift +8192: zigzag 16384.
                ops_stream(2 * bs, bs, &[OP_COPY, 0x80, 0x80, 0x01, 1, OP_END]),
                "of a 8192-byte base",
            ),
            // A shift before the base's start: zigzag 1 is -1.
            (
                ops_stream(2 * bs, bs, &[OP_ADD, 1, 1, 0, OP_END]),
                "range overflows",
            ),
            // More bytes than the image has.
            (ops_stream(2 * bs, 10, &[OP_DATA, 11]), "where 10 are left"),
            // The stream ends early, or goes on after its end.
            (
                ops_stream(2 * bs, 10, &[OP_DATA, 10, 1, 2]),
                "end inside data",
            ),
            (
                ops_stream(2 * bs, 1, &[OP_DATA, 1, 9, OP_END, 0]),
                "bytes follow its end",
            ),
            (
                ops_stream(2 * bs, 1, &[OP_DATA, 1, 9]),
                "end before the image",
            ),
            (
                ops_stream(2 * bs, 2, &[OP_DATA, 1, 9, OP_END]),
                "ends 1 bytes before",
            ),
            // A base larger than the source, an unknown op, a wrong magic, a huge number.
            (ops_stream(3 * bs, 1, &[OP_END]), "holds 8192"),
            (ops_stream(2 * bs, 1, &[9]), "unknown operation 9"),
            (
                b"APDELTA9".to_vec().into_iter().chain([0; 28]).collect(),
                "APDELTA2",
            ),
            (
                b"APDELTA1".to_vec().into_iter().chain([0; 28]).collect(),
                "make the delta again",
            ),
            (
                ops_stream(
                    2 * bs,
                    1,
                    &[
                        OP_DATA, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                    ],
                ),
                "longer than 64 bits",
            ),
        ];
        for (stream, want) in cases {
            let err = play(base.clone(), stream).unwrap_err();
            assert!(err.contains(want), "{err} (wanted {want})");
        }
        // A well-formed stream: copy block 1 (shift +4096: zigzag 8192), add to 2 bytes of
        // block 0 (shift -4096, written as -8192 from the last: zigzag 16383), 1 byte of data.
        let ok = ops_stream(
            2 * bs,
            bs + 3,
            &[
                OP_COPY, 0x80, 0x40, 1, OP_ADD, 0xff, 0x7f, 2, 0xff, 0x01, OP_DATA, 1, 42, OP_END,
            ],
        );
        let mut base = base;
        base[1] = 9;
        let out = play(base, ok).unwrap();
        assert_eq!(out.len(), BLOCK_SIZE as usize + 3);
        assert_eq!(&out[BLOCK_SIZE as usize..], &[4, 10, 42]);
    }

    #[test]
    fn a_base_that_cannot_be_read_is_the_error() {
        struct Broken;
        impl BaseSource for Broken {
            fn describe(&self) -> String {
                "rootfs_a".into()
            }
            fn read_exact_at(&self, _: &mut [u8], _: u64) -> io::Result<()> {
                Err(io::Error::other("I/O error"))
            }
        }
        let bs = u64::from(BLOCK_SIZE);
        let stream = ops_stream(bs, bs, &[OP_COPY, 0, 1, OP_END]);
        let mut r = DeltaReader::new(&stream[..], Box::new(Broken), bs, None);
        assert!(read_all(&mut r).is_err());
        let err = r.take_error().unwrap().to_string();
        assert!(err.contains("of the delta's base rootfs_a"), "{err}");
    }
}
