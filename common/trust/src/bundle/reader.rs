//! Reading bundles on the appliance, from any `Read` (a file or an HTTPS body), in one pass.
//!
//! Each payload is read through a stack of single-purpose readers:
//!
//! ```text
//! tar entry (exact size) -> sha256 of encoded bytes -> zstd decoder (bounded window)
//!     [-> delta played against the base, for a delta payload]
//!     -> limit to artifact.size -> sha256 of decoded bytes (on its own thread) -> the caller
//! ```
//!
//! A delta payload's rebuilt bytes are checked exactly as a full payload's: the signed size and
//! sha256 of the artifact, not of the delta.
//!
//! and checked when it ends, whether the caller read it to the end or not. The decoded bytes
//! are hashed by a [`BackgroundSha256`], so decompression and that hash run on two cores (the
//! hash of the encoded bytes, half as many or fewer, stays inline).

use std::io::{self, BufReader, Read};

use super::ustar::{self, Block, BLOCK};
use super::{
    MANIFEST_ENTRY, MAX_MANIFEST_SIZE, MAX_SIGNATURE_SIZE, MAX_WINDOW_LOG, SIGNATURE_ENTRY,
};
use crate::delta::{BaseSource, DeltaReader};
use crate::digest::{limit_exceeded, BackgroundSha256, HashingReader, LimitedReader, Sha256Hex};
use crate::keys::PublicKey;
use crate::manifest::{Artifact, Manifest, PayloadEncoding};
use crate::signing::{verify_manifest, VerifiedManifest};
use crate::TrustError;

/// Most zero bytes accepted after the end-of-archive marker (tar pads to 10 KiB records).
const MAX_TRAILING_ZEROS: u64 = 20 * BLOCK as u64;

/// Reads a bundle: first [`read_header`](Self::read_header), then the caller's policy check,
/// then [`for_each_payload`](Self::for_each_payload). After any error the reader is spent.
pub struct BundleReader<R> {
    inner: R,
    root: PublicKey,
    now: u64,
    stage: Stage,
    header: Option<HeaderBytes>,
    bases: Vec<(String, DeltaBaseSource)>,
    passed_over: Vec<String>,
}

/// What [`BundleReader::set_delta_base`] was given.
struct DeltaBaseSource {
    source: Box<dyn BaseSource>,
    len: u64,
    holds: Sha256Hex,
}

/// The exact bytes of a bundle's `manifest.json` and `manifest.sig` that
/// [`BundleReader::read_header`] verified, for a record of what was installed (kept byte for
/// byte so that the signature can be checked again later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderBytes {
    /// `manifest.json` as read.
    pub manifest_json: Vec<u8>,
    /// `manifest.sig` as read.
    pub sig_json: Vec<u8>,
}

enum Stage {
    Start,
    HeaderRead(Box<Manifest>),
    Done,
    Failed,
}

impl<R: Read> BundleReader<R> {
    /// A reader of `inner` that trusts the `root` key at time `now` (unix seconds).
    pub fn new(inner: R, root: &PublicKey, now: u64) -> Self {
        BundleReader {
            inner,
            root: *root,
            now,
            stage: Stage::Start,
            header: None,
            bases: Vec::new(),
            passed_over: Vec::new(),
        }
    }

    /// Lets the delta payload of `artifact` be rebuilt from `source` (the running slot's copy
    /// of it), `len` bytes of which are usable, and which holds the artifact whose sha256 is
    /// `holds`. A delta whose base is another artifact is refused before a byte of it is used;
    /// a delta payload without a base given here is refused.
    pub fn set_delta_base(
        &mut self,
        artifact: &str,
        source: Box<dyn BaseSource>,
        len: u64,
        holds: Sha256Hex,
    ) {
        self.bases.retain(|(name, _)| name != artifact);
        self.bases
            .push((artifact.to_owned(), DeltaBaseSource { source, len, holds }));
    }

    /// The payload of `artifact` is not for this reader (the other slot's unified kernel
    /// image): [`for_each_payload`](Self::for_each_payload) checks its encoded bytes against
    /// the manifest's payload size and hash, neither decodes them nor hands them on, and needs
    /// no delta base for it.
    pub fn pass_over(&mut self, artifact: &str) {
        if !self.passed_over.iter().any(|n| n == artifact) {
            self.passed_over.push(artifact.to_owned());
        }
    }

    /// The manifest and signature bytes [`read_header`](Self::read_header) verified; `None`
    /// before it succeeded.
    pub fn header_bytes(&self) -> Option<&HeaderBytes> {
        self.header.as_ref()
    }

    /// Reads `manifest.json` and `manifest.sig` and verifies them before any payload byte is
    /// read. Run the update policy on the result before calling
    /// [`for_each_payload`](Self::for_each_payload).
    pub fn read_header(&mut self) -> Result<VerifiedManifest, TrustError> {
        if !matches!(self.stage, Stage::Start) {
            return Err(misuse("read_header was already called"));
        }
        self.stage = Stage::Failed;
        let manifest_json = self.read_small_entry(MANIFEST_ENTRY, MAX_MANIFEST_SIZE)?;
        let sig_json = self.read_small_entry(SIGNATURE_ENTRY, MAX_SIGNATURE_SIZE)?;
        let verified = verify_manifest(&manifest_json, &sig_json, &self.root, self.now)?;
        self.stage = Stage::HeaderRead(Box::new(verified.manifest().clone()));
        self.header = Some(HeaderBytes {
            manifest_json,
            sig_json,
        });
        Ok(verified)
    }

    /// Hands each payload, in manifest order, to `f` as a reader of the decoded artifact bytes.
    ///
    /// The reader fails (an `io::Error` carrying the message) on the read that finds a problem;
    /// when `f` returns, whatever `f` left unread is drained and checked, and the typed
    /// [`TrustError`] (HashMismatch, SizeMismatch, Oversized, Truncated, ...) is returned in
    /// preference to `f`'s own error. So `f` must treat the bytes as unverified until this
    /// returns `Ok`. After the last payload the archive must end.
    pub fn for_each_payload<E, F>(&mut self, mut f: F) -> Result<(), E>
    where
        E: From<TrustError>,
        F: FnMut(&Artifact, &mut dyn Read) -> Result<(), E>,
    {
        let manifest = match std::mem::replace(&mut self.stage, Stage::Failed) {
            Stage::HeaderRead(m) => m,
            _ => return Err(misuse("call read_header first, and for_each_payload once").into()),
        };
        let payload_entries: Vec<String> = manifest
            .payload_artifacts()
            .filter_map(Artifact::payload_entry_name)
            .collect();
        for (artifact, entry) in manifest.payload_artifacts().zip(&payload_entries) {
            let size = self.next_entry(entry, &payload_entries)?;
            let payload = artifact
                .payload
                .as_ref()
                .ok_or_else(|| misuse("payload artifact without payload"))?;
            if size > payload.size {
                return Err(TrustError::Oversized {
                    entry: entry.clone(),
                    limit: payload.size,
                }
                .into());
            }
            if size < payload.size {
                return Err(TrustError::SizeMismatch {
                    artifact: entry.clone(),
                    expected: payload.size,
                    actual: size,
                }
                .into());
            }
            if self.passed_over.iter().any(|n| n == artifact.name.as_str()) {
                check_encoded(&mut self.inner, size, &payload.sha256, entry)?;
                skip(&mut self.inner, ustar::padding(size), entry)?;
                continue;
            }
            let base = match payload.encoding {
                PayloadEncoding::Delta => Some(take_base(&mut self.bases, artifact, entry)?),
                PayloadEncoding::Zstd => None,
            };
            let mut reader = PayloadReader::new(&mut self.inner, artifact, entry, base)?;
            let result = f(artifact, &mut reader);
            if let Some(failure) = reader.failure.take() {
                return Err(failure.into());
            }
            result?;
            reader.drain()?;
            skip(&mut self.inner, ustar::padding(size), entry)?;
        }
        self.expect_end()?;
        self.stage = Stage::Done;
        Ok(())
    }

    /// Reads and checks every payload, discarding the bytes: a full offline check of a bundle.
    pub fn verify_payloads(&mut self) -> Result<(), TrustError> {
        self.for_each_payload(|_, r: &mut dyn Read| {
            io::copy(r, &mut io::sink())
                .map(drop)
                .map_err(|e| TrustError::io("reading payload", e))
        })
    }

    /// Reads a header expecting `expected`; returns the entry's (untrusted) size.
    fn next_entry(&mut self, expected: &str, known: &[String]) -> Result<u64, TrustError> {
        match self.read_block(expected)? {
            None => Err(TrustError::Truncated {
                entry: format!("bundle (before {expected})"),
            }),
            Some(Block::End) => Err(TrustError::MissingEntry {
                name: expected.into(),
            }),
            Some(Block::Entry { name, size }) => {
                if name == expected {
                    Ok(size)
                } else if known.contains(&name) || name == MANIFEST_ENTRY || name == SIGNATURE_ENTRY
                {
                    Err(TrustError::Reordered {
                        entry: name,
                        expected: expected.into(),
                    })
                } else {
                    Err(TrustError::UnexpectedEntry {
                        expected: expected.into(),
                        found: name,
                    })
                }
            }
        }
    }

    /// Reads a header block; `None` at a clean end of stream.
    fn read_block(&mut self, context: &str) -> Result<Option<Block>, TrustError> {
        let mut block = [0u8; BLOCK];
        let mut filled = 0;
        while filled < BLOCK {
            match self.inner.read(&mut block[filled..]) {
                Ok(0) if filled == 0 => return Ok(None),
                Ok(0) => {
                    return Err(TrustError::Truncated {
                        entry: format!("bundle header (before {context})"),
                    })
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(TrustError::io(
                        format!("reading the bundle (before {context})"),
                        e,
                    ))
                }
            }
        }
        ustar::parse(&block).map(Some)
    }

    /// Reads a small entry whole, refusing sizes above `limit` before reading any of it.
    fn read_small_entry(&mut self, name: &str, limit: u64) -> Result<Vec<u8>, TrustError> {
        let size = self.next_entry(name, &[MANIFEST_ENTRY.into(), SIGNATURE_ENTRY.into()])?;
        if size > limit {
            return Err(TrustError::Oversized {
                entry: name.into(),
                limit,
            });
        }
        let mut data = Vec::new();
        read_exact_entry(&mut self.inner, size, name, &mut data)?;
        skip(&mut self.inner, ustar::padding(size), name)?;
        Ok(data)
    }

    /// After the last payload: the end marker (two zero blocks), then at most some zero padding.
    fn expect_end(&mut self) -> Result<(), TrustError> {
        for _ in 0..2 {
            match self.read_block("end of bundle")? {
                Some(Block::End) => {}
                Some(Block::Entry { name, .. }) => {
                    return Err(TrustError::UnexpectedEntry {
                        expected: "end of bundle".into(),
                        found: name,
                    })
                }
                None => {
                    return Err(TrustError::Truncated {
                        entry: "bundle end-of-archive marker".into(),
                    })
                }
            }
        }
        let mut rest = Vec::new();
        (&mut self.inner)
            .take(MAX_TRAILING_ZEROS + 1)
            .read_to_end(&mut rest)
            .map_err(|e| TrustError::io("reading the end of the bundle", e))?;
        if rest.len() as u64 > MAX_TRAILING_ZEROS || rest.iter().any(|b| *b != 0) {
            return Err(TrustError::UnexpectedEntry {
                expected: "end of bundle".into(),
                found: "data after the end-of-archive marker".into(),
            });
        }
        Ok(())
    }
}

fn misuse(reason: &str) -> TrustError {
    TrustError::malformed("bundle reader use", reason)
}

fn read_exact_entry(
    r: &mut impl Read,
    size: u64,
    entry: &str,
    out: &mut Vec<u8>,
) -> Result<(), TrustError> {
    let got = r
        .take(size)
        .read_to_end(out)
        .map_err(|e| TrustError::io(format!("reading bundle entry {entry}"), e))?;
    if (got as u64) < size {
        return Err(TrustError::Truncated {
            entry: entry.into(),
        });
    }
    Ok(())
}

/// Reads `size` bytes of a passed-over entry and checks them against `expected` (the sha256 of
/// the encoded payload, which the signed manifest gives).
fn check_encoded(
    r: &mut impl Read,
    size: u64,
    expected: &Sha256Hex,
    entry: &str,
) -> Result<(), TrustError> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match r.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(TrustError::Truncated {
                    entry: entry.into(),
                })
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(TrustError::io(format!("reading bundle entry {entry}"), e)),
        };
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    let actual = Sha256Hex::from_bytes(hasher.finalize().into());
    if &actual != expected {
        return Err(TrustError::HashMismatch {
            artifact: entry.into(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

fn skip(r: &mut impl Read, n: u64, entry: &str) -> Result<(), TrustError> {
    let got = io::copy(&mut r.take(n), &mut io::sink())
        .map_err(|e| TrustError::io(format!("reading bundle entry {entry}"), e))?;
    if got < n {
        return Err(TrustError::Truncated {
            entry: entry.into(),
        });
    }
    Ok(())
}

/// The data of one tar entry: exactly `remaining` bytes, and a note of why it failed, if it did.
struct EntryData<'r, R> {
    inner: &'r mut R,
    remaining: u64,
    truncated: bool,
    io_failed: bool,
}

impl<R: Read> Read for EntryData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let max = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        match self.inner.read(&mut buf[..max]) {
            Ok(0) => {
                self.truncated = true;
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "bundle stream ended inside an entry",
                ))
            }
            Ok(n) => {
                self.remaining -= n as u64;
                Ok(n)
            }
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.io_failed = true;
                }
                Err(e)
            }
        }
    }
}

type Encoded<'r, R> = BufReader<HashingReader<EntryData<'r, R>>>;
type Zstd<'r, R> = zstd::stream::read::Decoder<'static, Encoded<'r, R>>;
type Stack<'r, R> = DecodedHash<LimitedReader<Decoded<'r, R>>>;

/// The base for the delta payload `artifact`, if the reader was given the one it names.
fn take_base(
    bases: &mut Vec<(String, DeltaBaseSource)>,
    artifact: &Artifact,
    entry: &str,
) -> Result<DeltaBaseSource, TrustError> {
    let wanted = artifact
        .payload
        .as_ref()
        .and_then(|p| p.base.as_ref())
        .ok_or_else(|| misuse("a delta payload without a base passed validation"))?;
    let refuse = |found: String| TrustError::DeltaBase {
        artifact: entry.into(),
        base_version: wanted.version.to_string(),
        expected: wanted.sha256.to_string(),
        found,
    };
    let at = bases
        .iter()
        .position(|(name, _)| name == artifact.name.as_str());
    match at.map(|i| bases.swap_remove(i).1) {
        None => Err(refuse(
            "nothing to rebuild it from was given (this reader has no running slot)".into(),
        )),
        Some(b) if b.holds != wanted.sha256 => Err(refuse(format!(
            "{} holds the release whose sha256 is {}",
            b.source.describe(),
            b.holds
        ))),
        Some(b) if b.len < wanted.size => Err(refuse(format!(
            "{} has only {} bytes",
            b.source.describe(),
            b.len
        ))),
        Some(b) => Ok(b),
    }
}

/// The decoded bytes of a payload: the zstd stream itself, or the delta it holds played
/// against the base. One lives per payload being read, so the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Decoded<'r, R> {
    Zstd(Zstd<'r, R>),
    Delta(DeltaReader<Zstd<'r, R>>),
}

impl<'r, R> Decoded<'r, R> {
    fn zstd(&self) -> &Zstd<'r, R> {
        match self {
            Decoded::Zstd(z) => z,
            Decoded::Delta(d) => d.get_ref(),
        }
    }

    fn zstd_mut(&mut self) -> &mut Zstd<'r, R> {
        match self {
            Decoded::Zstd(z) => z,
            Decoded::Delta(d) => d.get_mut(),
        }
    }
}

impl<R: Read> Read for Decoded<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoded::Zstd(z) => z.read(buf),
            Decoded::Delta(d) => d.read(buf),
        }
    }
}

/// A reader that hashes what it passes on a [`BackgroundSha256`].
struct DecodedHash<R> {
    inner: R,
    hasher: Option<BackgroundSha256>,
    bytes: u64,
}

impl<R: Read> DecodedHash<R> {
    fn new(inner: R) -> Self {
        DecodedHash {
            inner,
            hasher: Some(BackgroundSha256::new()),
            bytes: 0,
        }
    }

    fn get_ref(&self) -> &R {
        &self.inner
    }

    fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    fn byte_count(&self) -> u64 {
        self.bytes
    }

    /// The digest of everything read; hashing ends here (a second call is an error).
    fn finish(&mut self) -> Result<Sha256Hex, TrustError> {
        match self.hasher.take() {
            Some(h) => h.finish(),
            None => Err(misuse("the decoded payload was hashed to the end twice")),
        }
    }
}

impl<R: Read> Read for DecodedHash<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.bytes += n as u64;
        Ok(n)
    }
}

/// The reader handed to the payload callback.
struct PayloadReader<'r, 'm, R> {
    stack: Stack<'r, R>,
    artifact: &'m Artifact,
    entry: &'m str,
    finished: bool,
    failure: Option<TrustError>,
    /// Set once a failure was reported, so later reads keep failing.
    failed_message: Option<String>,
}

impl<'r, 'm, R: Read> PayloadReader<'r, 'm, R> {
    fn new(
        inner: &'r mut R,
        artifact: &'m Artifact,
        entry: &'m str,
        base: Option<DeltaBaseSource>,
    ) -> Result<Self, TrustError> {
        let size = artifact.payload.as_ref().map_or(0, |p| p.size);
        let data = EntryData {
            inner,
            remaining: size,
            truncated: false,
            io_failed: false,
        };
        let decoder_err = |e| TrustError::io(format!("starting the zstd decoder for {entry}"), e);
        let mut decoder = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(
            64 * 1024,
            HashingReader::new(data),
        ))
        .map_err(decoder_err)?;
        decoder
            .window_log_max(MAX_WINDOW_LOG)
            .map_err(decoder_err)?;
        let decoded = match base {
            None => Decoded::Zstd(decoder),
            Some(b) => Decoded::Delta(DeltaReader::new(
                decoder,
                b.source,
                b.len,
                artifact.verity.clone(),
            )),
        };
        Ok(PayloadReader {
            stack: DecodedHash::new(LimitedReader::new(decoded, artifact.size)),
            artifact,
            entry,
            finished: false,
            failure: None,
            failed_message: None,
        })
    }

    fn encoded(&mut self) -> &mut Encoded<'r, R> {
        self.stack.get_mut().get_mut().zstd_mut().get_mut()
    }

    fn entry_state(&self) -> (bool, bool) {
        let data = self
            .stack
            .get_ref()
            .get_ref()
            .zstd()
            .get_ref()
            .get_ref()
            .get_ref();
        (data.truncated, data.io_failed)
    }

    /// Reads what the caller left and runs the end checks; the typed error if any.
    fn drain(&mut self) -> Result<(), TrustError> {
        if !self.finished && self.failed_message.is_none() {
            let _ = io::copy(self, &mut io::sink());
        }
        match self.failure.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// End checks: encoded size and hash, then decoded size and hash.
    fn finish(&mut self) -> Result<(), TrustError> {
        self.check_encoded()?;
        let (size, digest) = (self.stack.byte_count(), self.stack.finish()?);
        if size != self.artifact.size {
            return Err(TrustError::SizeMismatch {
                artifact: self.artifact.name.to_string(),
                expected: self.artifact.size,
                actual: size,
            });
        }
        if digest != self.artifact.sha256 {
            return Err(TrustError::HashMismatch {
                artifact: self.artifact.name.to_string(),
                expected: self.artifact.sha256.to_string(),
                actual: digest.to_string(),
            });
        }
        Ok(())
    }

    /// Reads the rest of the encoded entry and checks its hash against `payload.sha256`.
    fn check_encoded(&mut self) -> Result<(), TrustError> {
        let entry = self.entry;
        if let Err(e) = io::copy(self.encoded(), &mut io::sink()) {
            return Err(self
                .classify_entry_error(e)
                .unwrap_or_else(|e| TrustError::io(format!("reading {entry}"), e)));
        }
        let hashed = self.encoded().get_ref();
        let (digest, bytes) = (hashed.digest(), hashed.byte_count());
        let Some(payload) = self.artifact.payload.as_ref() else {
            return Ok(());
        };
        if bytes != payload.size {
            return Err(TrustError::Truncated {
                entry: entry.into(),
            });
        }
        if digest != payload.sha256 {
            return Err(TrustError::HashMismatch {
                artifact: entry.into(),
                expected: payload.sha256.to_string(),
                actual: digest.to_string(),
            });
        }
        Ok(())
    }

    /// The typed error for a failure of the tar entry layer, or the error back if it was not one.
    fn classify_entry_error(&self, e: io::Error) -> Result<TrustError, io::Error> {
        match self.entry_state() {
            (true, _) => Ok(TrustError::Truncated {
                entry: self.entry.into(),
            }),
            (_, true) => Ok(TrustError::io(
                format!("reading bundle entry {}", self.entry),
                e,
            )),
            _ => Err(e),
        }
    }

    /// The typed error for any failure that surfaced through the stack.
    fn classify(&mut self, e: io::Error) -> TrustError {
        if let Some(limit) = limit_exceeded(&e) {
            return TrustError::Oversized {
                entry: self.artifact.name.to_string(),
                limit: limit.limit,
            };
        }
        let delta_error = match self.stack.get_mut().get_mut() {
            Decoded::Delta(d) => d.take_error(),
            Decoded::Zstd(_) => None,
        };
        if let Some(typed @ TrustError::Io { .. }) = delta_error {
            // The base could not be read: the running slot's disk, not the bundle.
            return typed;
        }
        match self.classify_entry_error(e) {
            Ok(typed) => typed,
            // The delta's operations are wrong: said so, unless the bytes are not the signed
            // ones.
            Err(_) if delta_error.is_some() => match self.check_encoded() {
                Err(typed) => typed,
                Ok(()) => delta_error.expect("checked"),
            },
            // The decoder refused the data: if the encoded bytes are not the signed ones, say
            // that (the real cause); otherwise the signed payload itself is not valid zstd.
            Err(decode_error) => match self.check_encoded() {
                Err(typed) => typed,
                Ok(()) => TrustError::malformed(
                    format!("payload {}", self.entry),
                    format!("{decode_error}; rebuild it with compress_payload (zstd level 1-19)"),
                ),
            },
        }
    }

    fn fail(&mut self, error: TrustError) -> io::Error {
        let message = error.to_string();
        self.failure = Some(error);
        self.failed_message = Some(message.clone());
        io::Error::new(io::ErrorKind::InvalidData, message)
    }
}

impl<R: Read> Read for PayloadReader<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(message) = &self.failed_message {
            return Err(io::Error::new(io::ErrorKind::InvalidData, message.clone()));
        }
        if self.finished || buf.is_empty() {
            return Ok(0);
        }
        match self.stack.read(buf) {
            Ok(0) => match self.finish() {
                Ok(()) => {
                    self.finished = true;
                    Ok(0)
                }
                Err(e) => Err(self.fail(e)),
            },
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let typed = self.classify(e);
                Err(self.fail(typed))
            }
        }
    }
}
