//! SHA-256 values and the single-purpose stream pieces built on them: a hashing reader, a
//! hashing writer, and a reader that fails (instead of truncating) past a byte limit.
//!
//! Streams are stacked from these (as in coreos-installer's `src/io/`), one purpose per layer,
//! so that every byte of an update is hashed while it passes and nothing untrusted is buffered.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::str::FromStr;

use crate::TrustError;

/// A SHA-256 digest written as 64 lowercase hex characters, validated when parsed.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Sha256Hex(String);

impl Sha256Hex {
    /// Wraps raw digest bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Sha256Hex(hex::encode(bytes))
    }

    /// SHA-256 of `data`.
    pub fn digest(data: &[u8]) -> Self {
        Self::from_bytes(Sha256::digest(data).into())
    }

    /// The raw digest bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        // Cannot fail: the string was validated as 64 hex characters on construction.
        let _ = hex::decode_to_slice(&self.0, &mut out);
        out
    }

    /// The hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Sha256Hex {
    type Err = TrustError;

    fn from_str(s: &str) -> Result<Self, TrustError> {
        if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Sha256Hex(s.to_owned()))
        } else {
            Err(TrustError::malformed(
                format!("sha256 {s:?}"),
                "expected 64 lowercase hex characters",
            ))
        }
    }
}

impl TryFrom<String> for Sha256Hex {
    type Error = TrustError;

    fn try_from(s: String) -> Result<Self, TrustError> {
        s.parse()
    }
}

impl From<Sha256Hex> for String {
    fn from(h: Sha256Hex) -> String {
        h.0
    }
}

impl fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Hex({})", self.0)
    }
}

/// A reader that computes the SHA-256 and length of everything read through it.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Bytes read so far.
    pub fn byte_count(&self) -> u64 {
        self.bytes
    }

    /// The digest of the bytes read so far (the reader can go on).
    pub fn digest(&self) -> Sha256Hex {
        Sha256Hex::from_bytes(self.hasher.clone().finalize().into())
    }

    /// The inner reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The inner reader, mutably. Bytes read from it directly are not hashed.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Ends hashing: the inner reader, the digest and the byte count.
    pub fn finish(self) -> (R, Sha256Hex, u64) {
        let digest = Sha256Hex::from_bytes(self.hasher.finalize().into());
        (self.inner, digest, self.bytes)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// A writer that computes the SHA-256 and length of everything written through it.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Bytes written so far.
    pub fn byte_count(&self) -> u64 {
        self.bytes
    }

    /// The digest of the bytes written so far.
    pub fn digest(&self) -> Sha256Hex {
        Sha256Hex::from_bytes(self.hasher.clone().finalize().into())
    }

    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Ends hashing: the inner writer, the digest and the byte count. Does not flush.
    pub fn finish(self) -> (W, Sha256Hex, u64) {
        let digest = Sha256Hex::from_bytes(self.hasher.finalize().into());
        (self.inner, digest, self.bytes)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Bytes [`BackgroundSha256`] gathers before handing them to its thread.
const BACKGROUND_BATCH: usize = 1 << 20;
/// Batches in flight to the hashing thread (bounded: a slow hasher slows the producer).
const BACKGROUND_DEPTH: usize = 4;
/// Batches a [`BackgroundSha256`] ever allocates: those in flight, the one being hashed and
/// the one being filled. Past that the producer waits for one back instead of allocating:
/// a new batch's pages are zeroed by the kernel as they are first touched, which cost 5% of
/// an install's decoding thread when a hasher running behind made it allocate one per MiB.
const BACKGROUND_POOL: usize = BACKGROUND_DEPTH + 2;

/// SHA-256 computed on a thread of its own, so that a producer (a decompressor) and the hash
/// run on two cores. [`update`](Self::update) copies the bytes into 1 MiB batches (a copy
/// costs about a twentieth of hashing them with SHA-NI) and hands each full batch over a
/// bounded channel; [`finish`](Self::finish) hashes the rest and returns the digest. If the
/// thread cannot be started, it hashes inline: the same digest, on one core.
#[derive(Debug)]
pub struct BackgroundSha256 {
    batch: Vec<u8>,
    /// Batches allocated: at most [`BACKGROUND_POOL`], then reused.
    made: usize,
    bytes: u64,
    worker: Option<Worker>,
    inline: Option<Sha256>,
}

#[derive(Debug)]
struct Worker {
    to_hash: std::sync::mpsc::SyncSender<Vec<u8>>,
    free: std::sync::mpsc::Receiver<Vec<u8>>,
    handle: std::thread::JoinHandle<Sha256>,
}

impl Default for BackgroundSha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl BackgroundSha256 {
    /// Starts the hashing thread.
    pub fn new() -> Self {
        let (to_hash, batches) = std::sync::mpsc::sync_channel::<Vec<u8>>(BACKGROUND_DEPTH);
        let (give_back, free) = std::sync::mpsc::sync_channel::<Vec<u8>>(BACKGROUND_POOL);
        let spawned = std::thread::Builder::new()
            .name("sha256".into())
            .spawn(move || {
                let mut h = Sha256::new();
                for mut batch in batches {
                    h.update(&batch);
                    batch.clear();
                    // The producer may be gone already (finish dropped the receiver).
                    let _ = give_back.try_send(batch);
                }
                h
            });
        let (worker, inline) = match spawned {
            Ok(handle) => (
                Some(Worker {
                    to_hash,
                    free,
                    handle,
                }),
                None,
            ),
            Err(_) => (None, Some(Sha256::new())),
        };
        BackgroundSha256 {
            batch: Vec::new(),
            made: 0,
            bytes: 0,
            worker,
            inline,
        }
    }

    /// Adds `data` to the hash.
    pub fn update(&mut self, mut data: &[u8]) {
        self.bytes += data.len() as u64;
        if let Some(h) = &mut self.inline {
            h.update(data);
            return;
        }
        while !data.is_empty() {
            if self.batch.capacity() == 0 {
                self.batch = self.free_batch();
            }
            let room = BACKGROUND_BATCH - self.batch.len();
            let take = room.min(data.len());
            self.batch.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.batch.len() == BACKGROUND_BATCH {
                self.send();
            }
        }
    }

    /// An empty batch: one the thread gave back, a new one while fewer than
    /// [`BACKGROUND_POOL`] exist, else the next one given back.
    fn free_batch(&mut self) -> Vec<u8> {
        let worker = self.worker.as_ref();
        if let Some(b) = worker.and_then(|w| w.free.try_recv().ok()) {
            return b;
        }
        if self.made < BACKGROUND_POOL {
            self.made += 1;
            return Vec::with_capacity(BACKGROUND_BATCH);
        }
        // The thread gives every batch back; if it is gone (a panic, reported by `finish`),
        // a new batch keeps the producer going.
        worker
            .and_then(|w| w.free.recv().ok())
            .unwrap_or_else(|| Vec::with_capacity(BACKGROUND_BATCH))
    }

    /// Bytes hashed so far.
    pub fn byte_count(&self) -> u64 {
        self.bytes
    }

    fn send(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        let Some(worker) = &self.worker else {
            return;
        };
        // A send fails only if the thread is gone, which it is only after a panic: the batch
        // is dropped and `finish` reports the panic.
        let _ = worker.to_hash.send(batch);
    }

    /// The digest of everything passed to [`update`](Self::update).
    pub fn finish(mut self) -> Result<Sha256Hex, TrustError> {
        if let Some(h) = self.inline.take() {
            return Ok(Sha256Hex::from_bytes(h.finalize().into()));
        }
        if !self.batch.is_empty() {
            self.send();
        }
        let Some(worker) = self.worker.take() else {
            return Err(TrustError::io(
                "hashing",
                io::Error::other("the hashing thread is missing"),
            ));
        };
        drop(worker.to_hash);
        let hasher = worker.handle.join().map_err(|_| {
            TrustError::io("hashing", io::Error::other("the hashing thread panicked"))
        })?;
        Ok(Sha256Hex::from_bytes(hasher.finalize().into()))
    }
}

/// The error inside the `io::Error` (kind `InvalidData`) that [`LimitedReader`] returns; find it
/// with `err.get_ref().and_then(|e| e.downcast_ref::<LimitExceeded>())`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("more than {limit} bytes arrived")]
pub struct LimitExceeded {
    /// The limit that was passed.
    pub limit: u64,
}

/// A reader that passes at most `limit` bytes and returns an error, not a silent end of file,
/// when the inner reader has more. Use it where extra bytes mean the input is not what it
/// claims to be.
#[derive(Debug)]
pub struct LimitedReader<R> {
    inner: R,
    limit: u64,
    remaining: u64,
}

impl<R: Read> LimitedReader<R> {
    /// Wraps `inner`, allowing `limit` bytes.
    pub fn new(inner: R, limit: u64) -> Self {
        LimitedReader {
            inner,
            limit,
            remaining: limit,
        }
    }

    /// The inner reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The inner reader, mutably.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Returns the inner reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            // Probe for one more byte: end of file is fine, anything else breaks the limit.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    LimitExceeded { limit: self.limit },
                )),
            };
        }
        let max = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..max])?;
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Returns whether `err` came from a [`LimitedReader`] limit, and which limit.
pub fn limit_exceeded(err: &io::Error) -> Option<LimitExceeded> {
    err.get_ref()
        .and_then(|e| e.downcast_ref::<LimitExceeded>())
        .copied()
}

/// SHA-256 and length of a file.
pub fn sha256_file(path: &Path) -> Result<(Sha256Hex, u64), TrustError> {
    let file =
        File::open(path).map_err(|e| TrustError::io(format!("opening {}", path.display()), e))?;
    let mut reader = HashingReader::new(file);
    io::copy(&mut reader, &mut io::sink())
        .map_err(|e| TrustError::io(format!("reading {}", path.display()), e))?;
    let (_, digest, len) = reader.finish();
    Ok((digest, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    // sha256("abc"), FIPS 180-2 appendix B.1.
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn sha256hex_validates() {
        assert!(ABC.parse::<Sha256Hex>().is_ok());
        assert!(ABC.to_uppercase().parse::<Sha256Hex>().is_err());
        assert!(ABC[1..].parse::<Sha256Hex>().is_err());
        assert!(format!("{}g", &ABC[1..]).parse::<Sha256Hex>().is_err());
        let json = format!("\"{}\"", &ABC[2..]);
        assert!(serde_json::from_str::<Sha256Hex>(&json).is_err());
        let h: Sha256Hex = serde_json::from_str(&format!("\"{ABC}\"")).unwrap();
        assert_eq!(h, Sha256Hex::digest(b"abc"));
        assert_eq!(Sha256Hex::from_bytes(h.to_bytes()), h);
    }

    #[test]
    fn hashing_reader_hashes_and_counts() {
        let mut r = HashingReader::new(&b"abc"[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"abc");
        assert_eq!(r.byte_count(), 3);
        assert_eq!(r.digest().as_str(), ABC);
        let (_, d, n) = r.finish();
        assert_eq!((d.as_str(), n), (ABC, 3));
    }

    #[test]
    fn hashing_writer_hashes_and_counts() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"ab").unwrap();
        w.write_all(b"c").unwrap();
        let (inner, d, n) = w.finish();
        assert_eq!(inner, b"abc");
        assert_eq!((d.as_str(), n), (ABC, 3));
    }

    #[test]
    fn background_sha256_matches_inline_over_batch_edges() {
        let data: Vec<u8> = (0..(3 * BACKGROUND_BATCH + 12345))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let mut h = BackgroundSha256::new();
        // Pieces of odd sizes, so batches fill across calls.
        for piece in data.chunks(BACKGROUND_BATCH / 3 + 7) {
            h.update(piece);
        }
        assert_eq!(h.byte_count(), data.len() as u64);
        assert_eq!(h.finish().unwrap(), Sha256Hex::digest(&data));
        let mut empty = BackgroundSha256::new();
        empty.update(b"");
        assert_eq!(empty.finish().unwrap(), Sha256Hex::digest(b""));
        let mut abc = BackgroundSha256::new();
        abc.update(b"abc");
        assert_eq!(abc.finish().unwrap().as_str(), ABC);
    }

    #[test]
    fn limited_reader_passes_exact_size() {
        let mut r = LimitedReader::new(&b"12345"[..], 5);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"12345");
    }

    #[test]
    fn limited_reader_errors_instead_of_truncating() {
        let mut r = LimitedReader::new(&b"123456"[..], 5);
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(limit_exceeded(&err), Some(LimitExceeded { limit: 5 }));
        let other = io::Error::new(io::ErrorKind::InvalidData, "x");
        assert_eq!(limit_exceeded(&other), None);
    }

    #[test]
    fn limited_reader_zero_limit() {
        let mut r = LimitedReader::new(&b""[..], 0);
        assert_eq!(r.read(&mut [0u8; 4]).unwrap(), 0);
        let mut r = LimitedReader::new(&b"x"[..], 0);
        assert!(r.read(&mut [0u8; 4]).is_err());
    }

    #[test]
    fn sha256_file_hashes_and_names_path_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        let (d, n) = sha256_file(&path).unwrap();
        assert_eq!((d.as_str(), n), (ABC, 3));
        let missing = dir.path().join("missing");
        let err = sha256_file(&missing).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
