//! Writing a verified image to one target, in an order that never leaves a half-written disk
//! that boots:
//!
//! 1. **Invalidate**: make the image's span read as zeros where the target can do so cheaply
//!    (a punched hole, a zeroing discard), and in any case wipe the old partition table at
//!    both ends of the target and at the end of the image; sync.
//! 2. **Write**: stream-decompress `disk.img.zst` once (a decoder thread hands 8 MiB chunks to
//!    the writer) and `pwrite` only the ranges the bmap maps, except the first and last MiB of
//!    the image (the partition table and its backup), which are held back in memory. The
//!    compressed stream is hashed again as it is read; sync.
//! 3. **Verify**: read every mapped range back from the medium and check it against the bmap's
//!    checksum (the held-back bytes come from memory), and the re-hashed stream against the
//!    signed manifest.
//! 4. **Validate**: write the held-back partition-table regions, sync, read them back.
//!
//! Any failure after step 1 began wipes the partition table again ([`FlashError::Failed`]
//! says whether that worked). Unmapped ranges are never written: on a target that cannot
//! zero cheaply they keep their old contents, as with `bmaptool copy`.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::{Duration, Instant};

use aperture_trust::digest::HashingReader;

use crate::bmap::{ChecksumType, Hasher};
use crate::error::{FlashError, Result};
use crate::image::VerifiedImage;
use crate::target::Target;

/// Bytes decompressed, written and read back at a time.
pub const CHUNK: usize = 8 << 20;
/// The regions at each end of the image that are written last: the protective MBR, the GPT
/// and its backup (and, with 1 MiB alignment, nothing else).
pub const TABLE_REGION: u64 = 1 << 20;
/// Chunks in flight between the decoder and the writer.
const BUFFERS: usize = 4;

/// What a target is doing, for progress displays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Invalidating the old contents.
    Preparing,
    /// Writing the mapped ranges.
    Writing,
    /// Reading them back.
    Verifying,
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
            Stage::Verifying => "verifying",
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
    /// Bytes written (the mapped ranges).
    pub bytes_written: u64,
    /// Mapped ranges read back and checked.
    pub ranges_verified: usize,
    /// What happened to the unmapped ranges.
    pub unmapped: Unmapped,
    /// Time for invalidating, decompressing, writing and syncing.
    pub write_time: Duration,
    /// Time for reading back and checking, partition table included.
    pub verify_time: Duration,
}

/// Writes `image` to `target` and verifies it (see the module documentation for the order).
///
/// A target smaller than the image is refused before anything is written
/// ([`FlashError::Refused`]); any later failure is a [`FlashError::Failed`] after the
/// partition table has been wiped.
pub fn flash(
    image: &VerifiedImage,
    target: &mut dyn Target,
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
                wipe_error: wipe.err().map(|e| e.to_string()),
            })
        }
    }
}

/// One mapped range in bytes, with the checksum it must have.
struct Span {
    start: u64,
    end: u64,
    checksum: Option<String>,
}

/// A region written last, kept in memory until then.
struct Held {
    start: u64,
    bytes: Vec<u8>,
    /// The mapped parts, as absolute byte ranges.
    pieces: Vec<(u64, u64)>,
}

impl Held {
    fn end(&self) -> u64 {
        self.start + self.bytes.len() as u64
    }
}

struct Plan {
    spans: Vec<Span>,
    checksum_type: ChecksumType,
    held: Vec<Held>,
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
            let len = usize::try_from(end - start)
                .map_err(|_| FlashError::Stopped("the partition-table region is too large".into()))?;
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

    /// Splits `start..end` into runs that are either all in one held region or in none.
    fn split(&self, start: u64, end: u64) -> Vec<(u64, u64, Option<usize>)> {
        let mut out = Vec::new();
        let mut at = start;
        while at < end {
            let inside = self
                .held
                .iter()
                .position(|h| h.start <= at && at < h.end());
            let stop = match inside {
                Some(i) => self.held[i].end().min(end),
                None => self
                    .held
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
}

fn write_and_verify(
    image: &VerifiedImage,
    target: &mut dyn Target,
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
    let (own_sums, written) = stream_and_write(image, &mut plan, target, progress)?;
    target.sync()?;
    let write_time = started.elapsed();

    let verify_started = Instant::now();
    progress.stage(Stage::Verifying, image.mapped_bytes());
    verify_spans(&plan, &own_sums, target, progress)?;

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
        write_time,
        verify_time: verify_started.elapsed(),
    })
}

/// A chunk of decompressed image: its offset, the buffer and how much of it is filled.
type Chunk = (u64, Vec<u8>, usize);

/// What the decoder thread found: the compressed file's sha256 and size, and the
/// decompressed size.
struct Streamed {
    sha256: aperture_trust::manifest::Sha256Hex,
    zst_size: u64,
    image_bytes: u64,
}

/// Decompresses the image once, writes the mapped ranges (less the held regions), and checks
/// the stream against the signed manifest. Returns the checksums computed for ranges whose
/// bmap entry has none, and the bytes written or held.
fn stream_and_write(
    image: &VerifiedImage,
    plan: &mut Plan,
    target: &mut dyn Target,
    progress: &dyn Progress,
) -> Result<(Vec<Option<String>>, u64)> {
    let spans: Vec<(u64, u64)> = plan.spans.iter().map(|s| (s.start, s.end)).collect();
    let image_size = image.image_size();
    let zst_path = image.zst_path().to_path_buf();
    let (full_tx, full_rx) = sync_channel::<Chunk>(BUFFERS);
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(BUFFERS);
    for _ in 0..BUFFERS {
        // Cannot fail: the channel has room for every buffer and the receiver is alive.
        let _ = free_tx.send(vec![0u8; CHUNK]);
    }

    let mut own: Vec<Option<Hasher>> = plan
        .spans
        .iter()
        .map(|s| s.checksum.is_none().then(|| plan.checksum_type.hasher()))
        .collect();
    let (written, streamed) = std::thread::scope(|scope| {
        let decoder =
            scope.spawn(move || decode(&zst_path, image_size, &spans, full_tx, free_rx));
        let written = write_chunks(plan, &mut own, target, progress, full_rx, free_tx);
        let streamed = decoder
            .join()
            .unwrap_or_else(|_| Err(FlashError::Stopped("the decoder thread panicked".into())));
        (written, streamed)
    });
    let written = written?;
    let streamed = streamed?;

    let (signed_sha, signed_size) = image.zst_signed();
    let zst_name = image.zst_path().display();
    if streamed.sha256 != *signed_sha || streamed.zst_size != signed_size {
        return Err(FlashError::Image {
            dir: image.dir().to_path_buf(),
            reason: format!(
                "{zst_name} changed while it was being written (sha256 {}, the manifest \
                 says {signed_sha}); do not modify a build folder while flashing from it",
                streamed.sha256
            ),
        });
    }
    if streamed.image_bytes != image_size {
        return Err(FlashError::Image {
            dir: image.dir().to_path_buf(),
            reason: format!(
                "{zst_name} decompresses to {} bytes but the image is {image_size} bytes",
                streamed.image_bytes
            ),
        });
    }
    let own_sums = own.into_iter().map(|h| h.map(Hasher::finish_hex)).collect();
    Ok((own_sums, written))
}

/// The decoder thread: fills buffers from the stream and passes on those that hold mapped
/// bytes. Stops early when the writer hangs up.
fn decode(
    zst_path: &std::path::Path,
    image_size: u64,
    spans: &[(u64, u64)],
    full: SyncSender<Chunk>,
    free: Receiver<Vec<u8>>,
) -> Result<Streamed> {
    let shown = zst_path.display();
    let file =
        File::open(zst_path).map_err(|e| FlashError::io(format!("opening {shown}"), e))?;
    let hashing = BufReader::with_capacity(1 << 20, HashingReader::new(file));
    let mut decoder = zstd::stream::read::Decoder::with_buffer(hashing)
        .map_err(|e| FlashError::io(format!("starting to decompress {shown}"), e))?;
    let mut offset = 0u64;
    let mut next_span = 0usize;
    let mut spare: Option<Vec<u8>> = None;
    // When the writer stops (it failed, and reports why), there is no point reading on.
    let writer_gone = || FlashError::Stopped("the writer stopped".into());
    loop {
        let mut buf = match spare.take() {
            Some(buf) => buf,
            None => free.recv().map_err(|_| writer_gone())?,
        };
        let n = fill(&mut decoder, &mut buf).map_err(|e| {
            FlashError::io(
                format!("decompressing {shown} at image byte {offset}"),
                e,
            )
        })?;
        if n == 0 {
            break;
        }
        let end = offset + n as u64;
        if end > image_size {
            return Err(FlashError::Image {
                dir: zst_path.parent().unwrap_or(zst_path).to_path_buf(),
                reason: format!(
                    "{shown} decompresses to more than the image's {image_size} bytes"
                ),
            });
        }
        while next_span < spans.len() && spans[next_span].1 <= offset {
            next_span += 1;
        }
        let mapped = next_span < spans.len() && spans[next_span].0 < end;
        if mapped {
            full.send((offset, buf, n)).map_err(|_| writer_gone())?;
        } else {
            spare = Some(buf);
        }
        offset = end;
    }
    drop(full);
    // Hash any bytes after the last frame too: the signature covers the whole file.
    let mut rest = decoder.finish();
    io::copy(&mut rest, &mut io::sink())
        .map_err(|e| FlashError::io(format!("reading {shown}"), e))?;
    let (_, sha256, zst_size) = rest.into_inner().finish();
    Ok(Streamed {
        sha256,
        zst_size,
        image_bytes: offset,
    })
}

/// Reads until `buf` is full or the stream ends.
fn fill(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The writer side: for each chunk, the mapped parts go to the target or to a held region.
fn write_chunks(
    plan: &mut Plan,
    own: &mut [Option<Hasher>],
    target: &mut dyn Target,
    progress: &dyn Progress,
    full: Receiver<Chunk>,
    free: SyncSender<Vec<u8>>,
) -> Result<u64> {
    let mut written = 0u64;
    let mut next_span = 0usize;
    for (offset, buf, n) in full {
        let end = offset + n as u64;
        while next_span < plan.spans.len() && plan.spans[next_span].end <= offset {
            next_span += 1;
        }
        let mut i = next_span;
        while i < plan.spans.len() && plan.spans[i].start < end {
            let a = plan.spans[i].start.max(offset);
            let b = plan.spans[i].end.min(end);
            let bytes = &buf[(a - offset) as usize..(b - offset) as usize];
            if let Some(hasher) = own[i].as_mut() {
                hasher.update(bytes);
            }
            for (x, y, held) in plan.split(a, b) {
                let part = &bytes[(x - a) as usize..(y - a) as usize];
                match held {
                    Some(h) => {
                        let region = &mut plan.held[h];
                        let at = (x - region.start) as usize;
                        region.bytes[at..at + part.len()].copy_from_slice(part);
                    }
                    None => target.write_at(x, part)?,
                }
            }
            written += b - a;
            progress.advance(b - a);
            i += 1;
        }
        // The decoder may have finished; then the buffer is simply dropped.
        let _ = free.send(buf);
    }
    Ok(written)
}

/// Reads every mapped range back and checks it against its checksum.
fn verify_spans(
    plan: &Plan,
    own: &[Option<String>],
    target: &mut dyn Target,
    progress: &dyn Progress,
) -> Result<()> {
    let mut buf = vec![0u8; CHUNK];
    for (i, span) in plan.spans.iter().enumerate() {
        let Some(expected) = span.checksum.as_ref().or(own[i].as_ref()) else {
            continue;
        };
        let mut hasher = plan.checksum_type.hasher();
        for (a, b, held) in plan.split(span.start, span.end) {
            match held {
                Some(h) => {
                    let region = &plan.held[h];
                    let from = (a - region.start) as usize;
                    hasher.update(&region.bytes[from..from + (b - a) as usize]);
                }
                None => {
                    let mut at = a;
                    while at < b {
                        let n = (b - at).min(CHUNK as u64) as usize;
                        target.read_at(at, &mut buf[..n])?;
                        hasher.update(&buf[..n]);
                        at += n as u64;
                    }
                }
            }
            progress.advance(b - a);
        }
        let actual = hasher.finish_hex();
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(FlashError::ReadBack {
                target: target.name().to_string(),
                offset: span.start,
                end: span.end,
                what: format!(
                    "{} {actual}, the bmap says {expected}",
                    plan.checksum_type.name()
                ),
            });
        }
    }
    Ok(())
}

fn write_held(plan: &Plan, target: &mut dyn Target) -> Result<()> {
    for region in &plan.held {
        for &(a, b) in &region.pieces {
            let from = (a - region.start) as usize;
            target.write_at(a, &region.bytes[from..from + (b - a) as usize])?;
        }
    }
    Ok(())
}

fn check_held(plan: &Plan, target: &mut dyn Target) -> Result<()> {
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
