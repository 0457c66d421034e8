//! Writing a verified image to one target, in an order that never leaves a half-written disk
//! that boots:
//!
//! 1. **Invalidate**: make the image's span read as zeros where the target can do so cheaply
//!    (a punched hole, a zeroing discard), and in any case wipe the old partition table at
//!    both ends of the target and at the end of the image; sync.
//! 2. **Write and read back** (`stream.rs`): stream-decompress `disk.img.zst` once (a decoder
//!    thread hands 8 MiB chunks to the writer) and `pwrite` only the ranges the bmap maps,
//!    except the first and last MiB of the image (the partition table and its backup), which
//!    are held back in memory. Right behind the writes, the verifier (a reading thread and a
//!    hashing one) reads every written piece back from the medium and hashes it; each
//!    range's hash must equal the bmap's checksum (held bytes are hashed from memory). Sync. From a raw `disk.img`
//!    ([`VerifiedImage::open_raw`]) the same happens without the decoder: the mapped ranges
//!    are read from the file and written, the holes never read.
//! 3. **Validate**: write the held-back partition-table regions, sync, read them back.
//!
//! Any failure after step 1 began wipes the partition table again ([`FlashError::Failed`]
//! says whether that worked). Unmapped ranges are never written: on a target that cannot
//! zero cheaply they keep their old contents, as with `bmaptool copy`.
//!
//! Why the read-back may trail the writes instead of following a full sync: a block device
//! writes the chunks with `O_DIRECT`, which returns once the device has the bytes, and an
//! `O_DIRECT` read first writes back any dirty pages it covers (pieces that went through the
//! page cache), so it sees what reached the device; the final sync still makes it all
//! durable before the partition table goes down. Reading as we go keeps at most a few chunks
//! unchecked, so progress shows what the device has really taken, and the decoder, the
//! writes, the reads and the hashing overlap on separate cores.
//!
//! [`flash_all`] flashes several targets at once: one thread per target, each with its own
//! decoder, so one slow or failing device neither holds up nor fails the others; every
//! target's result is reported on its own.
//!
//! Why the compressed stream is not hashed a second time while it is written (it was hashed
//! against the signed manifest just before): every byte written lies in a mapped range whose
//! checksum comes from the signed bmap, and every range is read back and checked before the
//! partition table is written, so a stream changed after verification cannot produce a
//! bootable disk. A bmap without range checksums gives no such cover; then the stream is
//! hashed again and compared with the manifest, and the ranges are checked against hashes
//! of the stream taken as it was written.

use std::time::{Duration, Instant};

use crate::bmap::ChecksumType;
use crate::error::{FlashError, Result};
use crate::image::VerifiedImage;
use crate::target::Target;

/// Bytes decompressed, written and read back at a time.
pub const CHUNK: usize = 8 << 20;
/// The regions at each end of the image that are written last: the protective MBR, the GPT
/// and its backup (and, with 1 MiB alignment, nothing else).
pub const TABLE_REGION: u64 = 1 << 20;

/// What a target is doing, for progress displays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Invalidating the old contents.
    Preparing,
    /// Writing the mapped ranges and reading them back; progress counts bytes read back
    /// and checked.
    Writing,
    /// Writing and checking the partition table.
    PartitionTable,
    /// Finished and verified.
    Done,
}

impl Stage {
    /// A lower-case word for the stage.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Preparing => "preparing",
            Stage::Writing => "writing",
            Stage::PartitionTable => "partition table",
            Stage::Done => "done",
        }
    }
}

/// Receives progress of one target. Called from the thread writing that target.
pub trait Progress: Send + Sync {
    /// A stage begins; `total` is the bytes it will report through [`Progress::advance`].
    fn stage(&self, stage: Stage, total: u64);
    /// `bytes` more of the current stage are done.
    fn advance(&self, bytes: u64);
    /// What the target is doing besides writing (booting a Jetson's flashing initrd, writing
    /// its boot firmware), in a few words.
    fn note(&self, _what: &str) {}
}

/// A [`Progress`] that shows nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn stage(&self, _: Stage, _: u64) {}
    fn advance(&self, _: u64) {}
}

/// What happened to the ranges the bmap does not map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unmapped {
    /// They read as zeros: the target is equal to the image on every byte.
    Zeroed,
    /// The target cannot zero cheaply; they keep their old contents (as with bmaptool).
    LeftAsIs,
}

/// A target written and verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlashReport {
    /// The target's name.
    pub target: String,
    /// Bytes of image the target now holds.
    pub image_size: u64,
    /// Bytes written (the mapped ranges), all of them read back and checked.
    pub bytes_written: u64,
    /// Mapped ranges read back and checked.
    pub ranges_verified: usize,
    /// What happened to the unmapped ranges.
    pub unmapped: Unmapped,
    /// Time from the first write to the partition table read back.
    pub elapsed: Duration,
}

/// Writes `image` to `target` and verifies it (see the module documentation for the order).
///
/// A target smaller than the image is refused before anything is written
/// ([`FlashError::Refused`]); any later failure is a [`FlashError::Failed`] after the
/// partition table has been wiped.
pub fn flash(
    image: &VerifiedImage,
    target: &dyn Target,
    progress: &dyn Progress,
) -> Result<FlashReport> {
    let image_size = image.image_size();
    if target.size() < image_size {
        return Err(FlashError::refused(
            target.name(),
            format!(
                "it is too small: {} bytes, the image needs {image_size}",
                target.size()
            ),
        ));
    }
    match write_and_verify(image, target, progress) {
        Ok(report) => {
            progress.stage(Stage::Done, 0);
            Ok(report)
        }
        Err(error) => {
            let wipe = target
                .wipe_partition_table(image_size)
                .and_then(|()| target.sync());
            Err(FlashError::Failed {
                target: target.name().to_string(),
                error: Box::new(error),
                wipe_error: wipe.err().map(|e| crate::error::chain(&e)),
            })
        }
    }
}

/// One mapped range in bytes, with the checksum it must have.
pub(crate) struct Span {
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) checksum: Option<String>,
}

/// A region written last, kept in memory until then.
pub(crate) struct Held {
    pub(crate) start: u64,
    pub(crate) bytes: Vec<u8>,
    /// The mapped parts, as absolute byte ranges.
    pub(crate) pieces: Vec<(u64, u64)>,
}

impl Held {
    pub(crate) fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

/// What to write where: the mapped spans and the held-back regions.
pub(crate) struct Plan {
    pub(crate) spans: Vec<Span>,
    pub(crate) checksum_type: ChecksumType,
    pub(crate) held: Vec<Held>,
}

impl Plan {
    fn new(image: &VerifiedImage) -> Result<Plan> {
        let bmap = image.bmap();
        let size = bmap.image_size;
        let spans: Vec<Span> = bmap
            .ranges
            .iter()
            .map(|r| {
                let (start, len) = bmap.byte_span(r);
                Span {
                    start,
                    end: start + len,
                    checksum: r.checksum.clone(),
                }
            })
            .collect();
        let head_end = TABLE_REGION.min(size);
        let tail_start = size.saturating_sub(TABLE_REGION).max(head_end);
        let mut held = Vec::new();
        for (start, end) in [(0, head_end), (tail_start, size)] {
            if end <= start {
                continue;
            }
            let pieces = spans
                .iter()
                .filter_map(|s| {
                    let (a, b) = (s.start.max(start), s.end.min(end));
                    (a < b).then_some((a, b))
                })
                .collect();
            let len = usize::try_from(end - start).map_err(|_| {
                FlashError::Stopped("the partition-table region is too large".into())
            })?;
            held.push(Held {
                start,
                bytes: vec![0; len],
                pieces,
            });
        }
        Ok(Plan {
            spans,
            checksum_type: bmap.checksum_type.unwrap_or(ChecksumType::Sha256),
            held,
        })
    }
}

/// Splits `start..end` into runs that are either all in one held region or in none.
pub(crate) fn split(held: &[Held], start: u64, end: u64) -> Vec<(u64, u64, Option<usize>)> {
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let inside = held.iter().position(|h| h.start <= at && at < h.end());
        let stop = match inside {
            Some(i) => held[i].end().min(end),
            None => held
                .iter()
                .map(|h| h.start)
                .filter(|&s| s > at)
                .min()
                .unwrap_or(end)
                .min(end),
        };
        out.push((at, stop, inside));
        at = stop;
    }
    out
}

fn write_and_verify(
    image: &VerifiedImage,
    target: &dyn Target,
    progress: &dyn Progress,
) -> Result<FlashReport> {
    let started = Instant::now();
    let image_size = image.image_size();
    let mut plan = Plan::new(image)?;

    progress.stage(Stage::Preparing, 0);
    let unmapped = if target.zero_cheaply(0, image_size)? {
        Unmapped::Zeroed
    } else {
        Unmapped::LeftAsIs
    };
    target.wipe_partition_table(image_size)?;
    target.sync()?;

    progress.stage(Stage::Writing, image.mapped_bytes());
    let written = crate::stream::write_verified(image, &mut plan, target, progress)?;
    target.sync()?;

    let table_bytes: u64 = plan
        .held
        .iter()
        .flat_map(|h| &h.pieces)
        .map(|(a, b)| b - a)
        .sum();
    progress.stage(Stage::PartitionTable, table_bytes);
    write_held(&plan, target)?;
    target.sync()?;
    check_held(&plan, target)?;
    progress.advance(table_bytes);

    Ok(FlashReport {
        target: target.name().to_string(),
        image_size,
        bytes_written: written,
        ranges_verified: plan.spans.len(),
        unmapped,
        elapsed: started.elapsed(),
    })
}

fn write_held(plan: &Plan, target: &dyn Target) -> Result<()> {
    for region in &plan.held {
        for &(a, b) in &region.pieces {
            let from = (a - region.start) as usize;
            target.write_at(a, &region.bytes[from..from + (b - a) as usize])?;
        }
    }
    Ok(())
}

fn check_held(plan: &Plan, target: &dyn Target) -> Result<()> {
    for region in &plan.held {
        for &(a, b) in &region.pieces {
            let from = (a - region.start) as usize;
            let want = &region.bytes[from..from + (b - a) as usize];
            let mut got = vec![0u8; want.len()];
            target.read_at(a, &mut got)?;
            if got != want {
                let first = got.iter().zip(want).position(|(x, y)| x != y).unwrap_or(0);
                return Err(FlashError::ReadBack {
                    target: target.name().to_string(),
                    offset: a,
                    end: b,
                    what: format!(
                        "partition table region, first difference at byte {}",
                        a + first as u64
                    ),
                });
            }
        }
    }
    Ok(())
}

/// One target to flash, with where its progress goes.
pub struct Job {
    /// The target.
    pub target: Box<dyn Target>,
    /// Its progress display.
    pub progress: Box<dyn Progress>,
}

/// How one target ended.
#[derive(Debug)]
pub struct Outcome {
    /// The target's name.
    pub target: String,
    /// Its report, or why it failed.
    pub result: Result<FlashReport>,
    /// Wall time for this target.
    pub elapsed: Duration,
}

impl Outcome {
    /// Whether the target was written and verified.
    pub fn ok(&self) -> bool {
        self.result.is_ok()
    }
}

/// Flashes `image` to every job's target in parallel and returns one outcome per job, in
/// the order given.
pub fn flash_all(image: &VerifiedImage, jobs: Vec<Job>) -> Vec<Outcome> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                let name = job.target.name().to_string();
                let handle = scope.spawn(move || {
                    let started = Instant::now();
                    let result = flash(image, job.target.as_ref(), job.progress.as_ref());
                    (result, started.elapsed())
                });
                (name, handle)
            })
            .collect();
        handles
            .into_iter()
            .map(|(target, handle)| {
                let (result, elapsed) = handle.join().unwrap_or_else(|_| {
                    (
                        Err(FlashError::Failed {
                            target: target.clone(),
                            error: Box::new(FlashError::Stopped(
                                "the writer thread panicked".into(),
                            )),
                            wipe_error: Some(
                                "not attempted after the panic; wipe it by hand".into(),
                            ),
                        }),
                        Duration::ZERO,
                    )
                });
                Outcome {
                    target,
                    result,
                    elapsed,
                }
            })
            .collect()
    })
}
