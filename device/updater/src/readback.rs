//! Step 7 of an install ([`crate::install`]): reading a written slot back. The rootfs is read
//! in one sequential pass that feeds both the dm-verity check of every hash block and the
//! sha256 of the whole image (on two cores); boot files and Jetson partition ranges are re-read
//! and hashed. The partition's cached pages are dropped first, so the bytes come from the
//! medium, not from the page cache the writes just filled.

use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use sha2::{Digest, Sha256};

use aperture_slots::Slot;
use aperture_trust::manifest::{Artifact, Sha256Hex};

use crate::disk::{PartitionHandle, PartitionReader};
use crate::write::{fill, CHUNK};
use crate::UpdateError;

/// Re-read `artifact.size` bytes of `part` from `offset` and check their sha256.
pub(crate) fn verify_range(
    part: &dyn PartitionHandle,
    offset: u64,
    artifact: &Artifact,
    slot: Slot,
) -> Result<(), UpdateError> {
    let fail = |reason: String| UpdateError::Verify {
        slot,
        what: format!(
            "{} at offset {offset} of {}",
            artifact.name,
            part.describe()
        ),
        reason,
    };
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < artifact.size {
        let n = usize::try_from((artifact.size - done).min(CHUNK as u64)).unwrap_or(CHUNK);
        part.read_exact_at(&mut buf[..n], offset + done)
            .map_err(|e| fail(format!("reading: {e}")))?;
        h.update(&buf[..n]);
        done += n as u64;
    }
    let digest = Sha256Hex::from_bytes(h.finalize().into());
    if digest != artifact.sha256 {
        return Err(fail(format!(
            "sha256 is {digest}, the manifest says {}",
            artifact.sha256
        )));
    }
    Ok(())
}

/// Read the rootfs back once: sha256 of the whole artifact and the full dm-verity check.
pub fn verify_rootfs(
    part: &dyn PartitionHandle,
    rootfs: &Artifact,
    slot: Slot,
) -> Result<(), UpdateError> {
    let fail = |reason: String| UpdateError::Verify {
        slot,
        what: format!("rootfs {} on {}", rootfs.name, part.describe()),
        reason,
    };
    let verity = rootfs
        .verity
        .as_ref()
        .ok_or_else(|| fail("the manifest gives no verity parameters".into()))?;
    // One pass over the partition: the verity check reads it, and the bytes it reads in order
    // are handed to a second thread for the whole-image sha256, so the two hashes run on two
    // cores.
    let digest = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let hashing = scope.spawn(move || {
            let mut h = Sha256::new();
            for chunk in rx {
                h.update(&chunk);
            }
            Sha256Hex::from_bytes(h.finalize().into())
        });
        let feed = move |bytes: &[u8]| {
            // A send fails only if the hashing thread is gone; join() reports that below.
            let _ = tx.send(bytes.to_vec());
        };
        let mut reader = SequentialHasher::new(PartitionReader::new(part, rootfs.size), feed);
        let checked = aperture_trust::verity::verify_device(&mut reader, verity)
            .map_err(|e| fail(crate::error_chain(&e)))
            .and_then(|()| {
                reader
                    .finish(rootfs.size)
                    .map_err(|e| fail(format!("reading: {e}")))
            });
        drop(reader);
        let digest = hashing
            .join()
            .map_err(|_| fail("the hashing thread failed".into()));
        checked.and(digest)
    })?;
    if digest != rootfs.sha256 {
        return Err(fail(format!(
            "sha256 is {digest}, the manifest says {}",
            rootfs.sha256
        )));
    }
    Ok(())
}

/// Re-read a boot file and check its size and sha256.
pub(crate) fn verify_file(path: &Path, artifact: &Artifact, slot: Slot) -> Result<(), UpdateError> {
    let fail = |reason: String| UpdateError::Verify {
        slot,
        what: path.display().to_string(),
        reason,
    };
    let mut f = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0u64;
    loop {
        let n = fill(&mut f, &mut buf).map_err(|e| fail(e.to_string()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        len += n as u64;
    }
    let digest = Sha256Hex::from_bytes(h.finalize().into());
    if len != artifact.size || digest != artifact.sha256 {
        return Err(fail(format!(
            "{len} bytes with sha256 {digest}; the manifest says {} bytes with {}",
            artifact.size, artifact.sha256
        )));
    }
    Ok(())
}

/// Feeds the bytes of a `Read + Seek`, in order of position, to a hasher while someone else
/// (the verity check) reads it: a read that continues exactly where feeding stopped is fed,
/// any other (the hash-tree lookups) is not. [`SequentialHasher::finish`] feeds the rest.
struct SequentialHasher<R, F> {
    inner: R,
    pos: u64,
    hashed: u64,
    feed: F,
}

impl<R: Read + Seek, F: FnMut(&[u8])> SequentialHasher<R, F> {
    /// Hands bytes `0..` of `inner`, in order and each once, to `feed`.
    fn new(inner: R, feed: F) -> Self {
        SequentialHasher {
            inner,
            pos: 0,
            hashed: 0,
            feed,
        }
    }

    /// Feed the rest up to `len`, so `feed` has seen exactly bytes `0..len`.
    fn finish(&mut self, len: u64) -> io::Result<()> {
        self.seek(SeekFrom::Start(self.hashed))?;
        let mut buf = vec![0u8; CHUNK];
        while self.hashed < len {
            let want = usize::try_from(len - self.hashed)
                .unwrap_or(CHUNK)
                .min(CHUNK);
            let n = self.read(&mut buf[..want])?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the partition ends early",
                ));
            }
        }
        Ok(())
    }
}

impl<R: Read + Seek, F: FnMut(&[u8])> Read for SequentialHasher<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let end = self.pos + n as u64;
        if self.pos <= self.hashed && self.hashed < end {
            let skip = (self.hashed - self.pos) as usize;
            (self.feed)(&buf[skip..n]);
            self.hashed = end;
        }
        self.pos = end;
        Ok(n)
    }
}

impl<R: Read + Seek, F: FnMut(&[u8])> Seek for SequentialHasher<R, F> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = self.inner.seek(to)?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn sequential_hasher_hashes_each_byte_once_in_order() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut hasher = Sha256::new();
        let mut h = SequentialHasher::new(Cursor::new(data.clone()), |b: &[u8]| hasher.update(b));
        let mut buf = [0u8; 3000];
        h.read_exact(&mut buf).unwrap();
        h.seek(SeekFrom::Start(9000)).unwrap(); // a lookup elsewhere: not hashed
        h.read_exact(&mut buf[..100]).unwrap();
        h.seek(SeekFrom::Start(1000)).unwrap(); // overlapping re-read: only the new part
        h.read_exact(&mut buf).unwrap();
        h.finish(10_000).unwrap();
        drop(h);
        assert_eq!(
            Sha256Hex::from_bytes(hasher.finalize().into()),
            Sha256Hex::digest(&data)
        );
    }
}
