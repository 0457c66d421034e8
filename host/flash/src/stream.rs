//! The write-and-read-back stage of [`crate::writer`], threads in a pipeline:
//!
//! * the **decoder** decompresses `disk.img.zst` into a small pool of chunk buffers and passes
//!   on those that hold mapped bytes (unmapped chunks are decoded into a spare and dropped);
//!   from a raw `disk.img` there is no decoder, the writer reads the mapped ranges itself;
//! * the **writer** (the calling thread) writes the mapped pieces, or copies them into the
//!   held-back partition-table regions, and hands each piece to the verifier;
//! * the **verifier** is two threads: its reader reads each written piece back with the
//!   target's medium-reaching read, and its hasher feeds the pieces, in order, to their
//!   range's hash (held pieces come with their bytes); when a range's last piece is in, the
//!   hash must equal the bmap's checksum.
//!
//! Every buffer a piece is written from is aligned for `O_DIRECT`, so a block device takes
//! it without a copy into the page cache ([`crate::BlockTarget`]). Bounded channels between
//! the threads keep at most a few chunks in flight, so a slow device slows the decoder
//! instead of filling memory or the page cache.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use aperture_trust::digest::HashingReader;
use aperture_trust::manifest::Sha256Hex;

use crate::bmap::{ChecksumType, Hasher};
use crate::error::{FlashError, Result};
use crate::image::{Source as ImageSource, VerifiedImage};
use crate::target::{aligned_buffer, Target};
use crate::writer::{split, Held, Plan, Progress, Span, CHUNK};

/// Chunks in flight between the decoder and the writer.
const BUFFERS: usize = 4;
/// Pieces in flight between the writer and the verifier.
const PIECES: usize = 8;

/// A chunk of decompressed image: its offset, the buffer and how much of it is filled.
type Chunk = (u64, Aligned, usize);

/// Work for the verifier, in image order.
enum Check {
    /// Bytes `start..end` of span `span` were written: read them back.
    Written { span: usize, start: u64, end: u64 },
    /// Bytes of span `span` ending at `end`, held back in memory: hashed as they are.
    Held {
        span: usize,
        end: u64,
        data: Vec<u8>,
    },
    /// The hash of span `span` taken from the stream, for a bmap without range checksums;
    /// sent before the span's last piece.
    StreamSum { span: usize, sum: String },
}

/// Writes and reads back every mapped range of `image` (the held regions only go to memory).
/// Returns the bytes written or held, all of them checked.
pub(crate) fn write_verified(
    image: &VerifiedImage,
    plan: &mut Plan,
    target: &dyn Target,
    progress: &dyn Progress,
) -> Result<u64> {
    let rehash = plan.spans.iter().any(|s| s.checksum.is_none());
    let ranges: Vec<(u64, u64)> = plan.spans.iter().map(|s| (s.start, s.end)).collect();
    let image_size = image.image_size();
    let (zst_path, signed_sha, signed_size) = match image.source() {
        ImageSource::Raw(raw) => return write_raw(raw, image_size, plan, target, progress),
        ImageSource::Compressed { path, sha256, size } => (path.clone(), sha256.clone(), *size),
    };
    let (full_tx, full_rx) = sync_channel::<Chunk>(BUFFERS);
    let (free_tx, free_rx) = sync_channel::<Aligned>(BUFFERS);
    let (check_tx, check_rx) = sync_channel::<Check>(PIECES);
    for _ in 0..BUFFERS {
        // Cannot fail: the channel has room for every buffer and the receiver is alive.
        // Aligned, so that the target can write the mapped pieces with `O_DIRECT`.
        let _ = free_tx.send(Aligned::new());
    }
    let spans: &[Span] = &plan.spans;
    let held: &mut [Held] = &mut plan.held;
    let checksum_type = plan.checksum_type;
    let zst_ref = zst_path.as_path();
    let (decoded, written, verified) = std::thread::scope(|scope| {
        let decoder =
            scope.spawn(move || decode(zst_ref, image_size, &ranges, rehash, full_tx, free_rx));
        let verifier =
            scope.spawn(move || verify(spans, checksum_type, target, progress, check_rx));
        let written = write_loop(
            spans,
            checksum_type,
            held,
            target,
            full_rx,
            free_tx,
            check_tx,
        );
        let stopped = |what: &str| FlashError::Stopped(format!("the {what} thread panicked"));
        let verified = verifier.join().unwrap_or_else(|_| Err(stopped("verifier")));
        let decoded = decoder.join().unwrap_or_else(|_| Err(stopped("decoder")));
        (decoded, written, verified)
    });
    // When one thread fails the others only report that they stopped: report the cause.
    let cause = [
        written.as_ref().err(),
        verified.as_ref().err(),
        decoded.as_ref().err(),
    ]
    .into_iter()
    .flatten()
    .find(|e| !matches!(e, FlashError::Stopped(_)))
    .is_some();
    let (written, spans_done, streamed) = if cause {
        match (written, verified, decoded) {
            (Err(e), _, _) if !matches!(e, FlashError::Stopped(_)) => return Err(e),
            (_, Err(e), _) if !matches!(e, FlashError::Stopped(_)) => return Err(e),
            (_, _, Err(e)) => return Err(e),
            _ => return Err(FlashError::Stopped("a flashing thread failed".into())),
        }
    } else {
        (written?, verified?, decoded?)
    };

    let image_error = |reason: String| FlashError::Image {
        dir: image.dir().to_path_buf(),
        reason,
    };
    let zst_name = zst_path.display();
    if let Some((sha256, size)) = streamed.rehashed {
        if sha256 != signed_sha || size != signed_size {
            return Err(image_error(format!(
                "{zst_name} changed while it was being written (sha256 {sha256}, the manifest \
                 says {signed_sha}); do not modify a build folder while flashing from it"
            )));
        }
    }
    if streamed.image_bytes != image_size {
        return Err(image_error(format!(
            "{zst_name} decompresses to {} bytes but the image is {image_size} bytes",
            streamed.image_bytes
        )));
    }
    if spans_done != plan.spans.len() {
        return Err(image_error(format!(
            "only {spans_done} of the bmap's {} ranges arrived from {zst_name}",
            plan.spans.len()
        )));
    }
    Ok(written)
}

/// [`write_verified`] from a raw image ([`VerifiedImage::open_raw`]): the calling thread
/// reads each mapped range from the file and writes it to the target in pieces of at most
/// [`CHUNK`] bytes; the verifier thread reads them back behind it as for a compressed image.
/// (`sendfile` to the device measured slower on a loop device than reading and writing.)
/// The holes are never read. Every span has a checksum (`open_raw` insists), so the
/// read-back alone checks what the file held.
fn write_raw(
    path: &Path,
    image_size: u64,
    plan: &mut Plan,
    target: &dyn Target,
    progress: &dyn Progress,
) -> Result<u64> {
    let (check_tx, check_rx) = sync_channel::<Check>(PIECES);
    let spans: &[Span] = &plan.spans;
    let held: &mut [Held] = &mut plan.held;
    let checksum_type = plan.checksum_type;
    let (written, verified) = std::thread::scope(|scope| {
        let verifier =
            scope.spawn(move || verify(spans, checksum_type, target, progress, check_rx));
        let written = copy_loop(path, image_size, spans, held, target, check_tx);
        let verified = verifier
            .join()
            .unwrap_or_else(|_| Err(FlashError::Stopped("the verifier thread panicked".into())));
        (written, verified)
    });
    let spans_done = match (written, verified) {
        (Err(e), _) if !matches!(e, FlashError::Stopped(_)) => return Err(e),
        (_, Err(e)) => return Err(e),
        (Err(e), _) => return Err(e),
        (Ok(written), Ok(done)) => {
            if done != plan.spans.len() {
                return Err(FlashError::Stopped(format!(
                    "only {done} of the bmap's {} ranges were checked",
                    plan.spans.len()
                )));
            }
            written
        }
    };
    Ok(spans_done)
}

/// The copying side of [`write_raw`]; returns the bytes written or held.
fn copy_loop(
    path: &Path,
    image_size: u64,
    spans: &[Span],
    held: &mut [Held],
    target: &dyn Target,
    checks: SyncSender<Check>,
) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let verifier_gone = || FlashError::Stopped("the verifier stopped".into());
    let shown = path.display();
    let file = File::open(path).map_err(|e| FlashError::io(format!("opening {shown}"), e))?;
    let read = |buf: &mut [u8], at: u64| {
        file.read_exact_at(buf, at).map_err(|e| {
            FlashError::io(
                format!("reading {shown} at byte {at} (an image of {image_size} bytes)"),
                e,
            )
        })
    };
    // Aligned, so that the target can write it with `O_DIRECT`.
    let mut buf = Aligned::new();
    let mut written = 0u64;
    for (i, span) in spans.iter().enumerate() {
        for (a, b, inside) in split(held, span.start, span.end) {
            if let Some(h) = inside {
                let region = &mut held[h];
                let at = (a - region.start) as usize;
                let part = &mut region.bytes[at..at + (b - a) as usize];
                read(part, a)?;
                let data = part.to_vec();
                checks
                    .send(Check::Held {
                        span: i,
                        end: b,
                        data,
                    })
                    .map_err(|_| verifier_gone())?;
                continue;
            }
            let mut at = a;
            while at < b {
                let n = (b - at).min(CHUNK as u64);
                let piece = buf.slice_mut(n as usize);
                read(piece, at)?;
                target.write_at(at, piece)?;
                checks
                    .send(Check::Written {
                        span: i,
                        start: at,
                        end: at + n,
                    })
                    .map_err(|_| verifier_gone())?;
                at += n;
            }
        }
        written += span.end - span.start;
    }
    Ok(written)
}

/// What the decoder thread saw.
struct Streamed {
    /// The compressed file's sha256 and size, when it was hashed again.
    rehashed: Option<(Sha256Hex, u64)>,
    /// Decompressed bytes.
    image_bytes: u64,
}

/// The compressed file, hashed again as it is read or not.
enum Source {
    Hashing(HashingReader<File>),
    Plain(File),
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Hashing(r) => r.read(buf),
            Source::Plain(f) => f.read(buf),
        }
    }
}

/// The decoder thread. Gives up when the writer hangs up (it failed and reports why).
fn decode(
    zst_path: &Path,
    image_size: u64,
    ranges: &[(u64, u64)],
    rehash: bool,
    full: SyncSender<Chunk>,
    free: Receiver<Aligned>,
) -> Result<Streamed> {
    let shown = zst_path.display();
    let file = File::open(zst_path).map_err(|e| FlashError::io(format!("opening {shown}"), e))?;
    let source = if rehash {
        Source::Hashing(HashingReader::new(file))
    } else {
        Source::Plain(file)
    };
    let mut decoder =
        zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(1 << 20, source))
            .map_err(|e| FlashError::io(format!("starting to decompress {shown}"), e))?;
    let writer_gone = || FlashError::Stopped("the writer stopped".into());
    let mut offset = 0u64;
    let mut next = 0usize;
    let mut spare: Option<Aligned> = None;
    loop {
        let mut buf = match spare.take() {
            Some(buf) => buf,
            None => free.recv().map_err(|_| writer_gone())?,
        };
        let n = fill(&mut decoder, buf.slice_mut(CHUNK)).map_err(|e| {
            FlashError::io(format!("decompressing {shown} at image byte {offset}"), e)
        })?;
        if n == 0 {
            break;
        }
        let end = offset + n as u64;
        if end > image_size {
            return Err(FlashError::Image {
                dir: zst_path.parent().unwrap_or(zst_path).to_path_buf(),
                reason: format!("{shown} decompresses to more than the image's {image_size} bytes"),
            });
        }
        while next < ranges.len() && ranges[next].1 <= offset {
            next += 1;
        }
        if next < ranges.len() && ranges[next].0 < end {
            full.send((offset, buf, n)).map_err(|_| writer_gone())?;
        } else {
            spare = Some(buf);
        }
        offset = end;
    }
    drop(full);
    let rehashed = match decoder.finish().into_inner() {
        Source::Hashing(mut reader) => {
            // Bytes after the last frame count too: the signature covers the whole file.
            io::copy(&mut reader, &mut io::sink())
                .map_err(|e| FlashError::io(format!("reading {shown}"), e))?;
            let (_, sha256, size) = reader.finish();
            Some((sha256, size))
        }
        Source::Plain(_) => None,
    };
    Ok(Streamed {
        rehashed,
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

/// The writer: writes (or holds) the mapped pieces of each chunk and queues their checks.
/// Returns the bytes written or held.
fn write_loop(
    spans: &[Span],
    checksum_type: ChecksumType,
    held: &mut [Held],
    target: &dyn Target,
    full: Receiver<Chunk>,
    free: SyncSender<Aligned>,
    checks: SyncSender<Check>,
) -> Result<u64> {
    let verifier_gone = || FlashError::Stopped("the verifier stopped".into());
    let count = spans.len();
    let mut stream: Vec<Option<Hasher>> = spans
        .iter()
        .map(|s| s.checksum.is_none().then(|| checksum_type.hasher()))
        .collect();
    let mut written = 0u64;
    let mut next = 0usize;
    for (offset, buf, n) in full {
        let end = offset + n as u64;
        while next < count && spans[next].end <= offset {
            next += 1;
        }
        let mut i = next;
        while i < count && spans[i].start < end {
            let span_end = spans[i].end;
            let (a, b) = (spans[i].start.max(offset), span_end.min(end));
            let bytes = &buf.slice(n)[(a - offset) as usize..(b - offset) as usize];
            if let Some(hasher) = stream[i].as_mut() {
                hasher.update(bytes);
                if b == span_end {
                    if let Some(done) = stream[i].take() {
                        let sum = done.finish_hex();
                        checks
                            .send(Check::StreamSum { span: i, sum })
                            .map_err(|_| verifier_gone())?;
                    }
                }
            }
            for (x, y, inside) in split(held, a, b) {
                let part = &bytes[(x - a) as usize..(y - a) as usize];
                let check = match inside {
                    Some(h) => {
                        let region = &mut held[h];
                        let at = (x - region.start) as usize;
                        region.bytes[at..at + part.len()].copy_from_slice(part);
                        Check::Held {
                            span: i,
                            end: y,
                            data: part.to_vec(),
                        }
                    }
                    None => {
                        target.write_at(x, part)?;
                        Check::Written {
                            span: i,
                            start: x,
                            end: y,
                        }
                    }
                };
                checks.send(check).map_err(|_| verifier_gone())?;
            }
            written += b - a;
            i += 1;
        }
        // The decoder may have finished; then the buffer is simply dropped.
        let _ = free.send(buf);
    }
    Ok(written)
}

/// A [`CHUNK`]-sized buffer whose start is aligned for `O_DIRECT`.
struct Aligned {
    storage: Vec<u8>,
    start: usize,
}

impl Aligned {
    fn new() -> Aligned {
        let (storage, start) = aligned_buffer(CHUNK);
        Aligned { storage, start }
    }

    /// The first `len` bytes (at most [`CHUNK`]).
    fn slice_mut(&mut self, len: usize) -> &mut [u8] {
        &mut self.storage[self.start..self.start + len]
    }

    fn slice(&self, len: usize) -> &[u8] {
        &self.storage[self.start..self.start + len]
    }
}

/// Read-back buffers in flight between the verifier's reader and its hasher.
const READ_BUFFERS: usize = 3;

/// Work for the verifier's hasher, in image order.
enum Piece {
    /// Bytes of span `span` ending at `end`, read back into the first `len` bytes of `buf`.
    Read {
        span: usize,
        end: u64,
        buf: Aligned,
        len: usize,
    },
    /// A [`Check::Held`] or [`Check::StreamSum`], passed on as it came.
    Other(Check),
}

/// The verifier: reads back every written piece, in order, on one thread and hashes it on
/// another, so that the next read overlaps the hashing of the last (a read from the medium
/// mostly waits on the device; the hash keeps a core busy). Returns the spans checked.
fn verify(
    spans: &[Span],
    checksum_type: ChecksumType,
    target: &dyn Target,
    progress: &dyn Progress,
    checks: Receiver<Check>,
) -> Result<usize> {
    let (piece_tx, piece_rx) = sync_channel::<Piece>(READ_BUFFERS);
    let (free_tx, free_rx) = sync_channel::<Aligned>(READ_BUFFERS);
    for _ in 0..READ_BUFFERS {
        // Cannot fail: the channel has room for every buffer and the receiver is alive.
        let _ = free_tx.send(Aligned::new());
    }
    let (read, hashed) = std::thread::scope(|scope| {
        let reader = scope.spawn(move || read_back(target, checks, piece_tx, free_rx));
        let hashed = hash_pieces(spans, checksum_type, target, progress, piece_rx, free_tx);
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(FlashError::Stopped("the read-back thread panicked".into())));
        (read, hashed)
    });
    match (read, hashed) {
        // The reader failed (an I/O error) and the hasher ran out of pieces, or the hasher
        // failed (a mismatch) and the reader found it gone: report the cause.
        (Err(e), _) if !matches!(e, FlashError::Stopped(_)) => Err(e),
        (_, Err(e)) => Err(e),
        (Err(e), Ok(_)) => Err(e),
        (Ok(()), Ok(done)) => Ok(done),
    }
}

/// The verifier's reader: reads each written piece back from the medium in buffers of at
/// most [`CHUNK`] bytes and passes them, with everything else, to the hasher in order.
fn read_back(
    target: &dyn Target,
    checks: Receiver<Check>,
    pieces: SyncSender<Piece>,
    free: Receiver<Aligned>,
) -> Result<()> {
    let hasher_gone = || FlashError::Stopped("the hasher stopped".into());
    for check in checks {
        let Check::Written { span, start, end } = check else {
            pieces
                .send(Piece::Other(check))
                .map_err(|_| hasher_gone())?;
            continue;
        };
        let mut at = start;
        while at < end {
            let len = (end - at).min(CHUNK as u64) as usize;
            let mut buf = free.recv().map_err(|_| hasher_gone())?;
            target.read_at(at, buf.slice_mut(len))?;
            at += len as u64;
            pieces
                .send(Piece::Read {
                    span,
                    end: at,
                    buf,
                    len,
                })
                .map_err(|_| hasher_gone())?;
        }
    }
    Ok(())
}

/// The verifier's hasher: feeds each piece to its span's hash; when a span's last piece is
/// in, the hash must equal its checksum. Returns the spans checked.
fn hash_pieces(
    spans: &[Span],
    checksum_type: ChecksumType,
    target: &dyn Target,
    progress: &dyn Progress,
    pieces: Receiver<Piece>,
    free: SyncSender<Aligned>,
) -> Result<usize> {
    let mut hashers: Vec<Option<Hasher>> = (0..spans.len()).map(|_| None).collect();
    let mut stream_sums: Vec<Option<String>> = vec![None; spans.len()];
    let mut done = 0usize;
    for piece in pieces {
        let (span, end, len) = match piece {
            Piece::Other(Check::StreamSum { span, sum }) => {
                stream_sums[span] = Some(sum);
                continue;
            }
            Piece::Other(Check::Held { span, end, data }) => {
                hashers[span]
                    .get_or_insert_with(|| checksum_type.hasher())
                    .update(&data);
                (span, end, data.len() as u64)
            }
            Piece::Other(Check::Written { .. }) => {
                return Err(FlashError::Stopped(
                    "a written piece reached the hasher without being read back".into(),
                ))
            }
            Piece::Read {
                span,
                end,
                buf,
                len,
            } => {
                hashers[span]
                    .get_or_insert_with(|| checksum_type.hasher())
                    .update(buf.slice(len));
                // The reader may have finished; then the buffer is simply dropped.
                let _ = free.send(buf);
                (span, end, len as u64)
            }
        };
        progress.advance(len);
        let range = &spans[span];
        if end < range.end {
            continue;
        }
        let actual = hashers[span]
            .take()
            .map(Hasher::finish_hex)
            .unwrap_or_default();
        let (expected, from) = match (&range.checksum, &stream_sums[span]) {
            (Some(sum), _) => (sum, "the bmap says"),
            (None, Some(sum)) => (sum, "the stream hashed to"),
            (None, None) => {
                return Err(FlashError::Stopped(format!(
                    "no checksum for bytes {}..{}: the stream hash did not arrive",
                    range.start, range.end
                )))
            }
        };
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(FlashError::ReadBack {
                target: target.name().to_string(),
                offset: range.start,
                end: range.end,
                what: format!("{} {actual}, {from} {expected}", checksum_type.name()),
            });
        }
        done += 1;
    }
    Ok(done)
}
