//! Step 7 of an install ([`crate::install`]): reading a written slot back. The rootfs is read
//! in one sequential pass (direct I/O where the partition takes it) that feeds both the
//! dm-verity check of every data and hash block and the sha256 of the whole image, on two
//! cores ([`verify_rootfs`]); boot files and Jetson partition ranges are re-read and hashed.
//! The install drops the partition's cached pages first, so that even without direct I/O the
//! bytes come from the medium, not from the page cache the writes just filled.

use std::path::Path;
use std::sync::mpsc::{channel, sync_channel};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use aperture_slots::Slot;
use aperture_trust::manifest::{Artifact, Sha256Hex};
use aperture_trust::verity::VerityCheck;

use crate::aligned::{AlignedBuf, ALIGN};
use crate::disk::PartitionHandle;
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

/// Chunks read ahead of the two hashing threads.
const READ_DEPTH: usize = 4;

/// Read the rootfs back once: sha256 of the whole artifact and the full dm-verity check.
///
/// Three threads: this one reads the partition in order, [`CHUNK`] at a time into buffers
/// aligned for `O_DIRECT` (so, where the partition takes it, from the medium and never from
/// the page cache); each chunk is shared with a thread computing the sha256 of the artifact
/// and one feeding [`VerityCheck`] (every data block hashed into the tree, the superblock and
/// every stored hash block compared), which run on two cores while the next chunk is read.
/// At most [`READ_DEPTH`] chunks are in flight.
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
    let check = VerityCheck::new(verity).map_err(|e| fail(crate::error_chain(&e)))?;
    let verity_end = check.end();
    let len = rootfs.size.max(verity_end);
    if len > part.size() {
        return Err(fail(format!(
            "the image and its hash tree end at byte {len}, past the end of the {}-byte \
             partition",
            part.size()
        )));
    }
    type Chunk = (Arc<AlignedBuf>, usize);
    let (digest, checked, read) = std::thread::scope(|scope| {
        let (sha_tx, sha_rx) = sync_channel::<Chunk>(READ_DEPTH);
        let (verity_tx, verity_rx) = sync_channel::<Chunk>(READ_DEPTH);
        let (released_tx, released) = channel::<()>();
        let released_sha = released_tx.clone();
        let size = rootfs.size;
        let hashing = scope.spawn(move || {
            let mut h = Sha256::new();
            let mut done = 0u64;
            for (buf, n) in sha_rx {
                let take = usize::try_from(size - done).unwrap_or(n).min(n);
                h.update(&buf.as_slice()[..take]);
                done += take as u64;
                drop(buf);
                let _ = released_sha.send(());
            }
            Sha256Hex::from_bytes(h.finalize().into())
        });
        let checking = scope.spawn(move || {
            let mut check = check;
            for (buf, n) in verity_rx {
                let take = usize::try_from(verity_end - check.position())
                    .unwrap_or(n)
                    .min(n);
                let fed = check.update(&buf.as_slice()[..take]);
                drop(buf);
                let _ = released_tx.send(());
                fed?;
            }
            check.finish()
        });
        let mut pool: Vec<Arc<AlignedBuf>> = Vec::new();
        let mut offset = 0u64;
        let read = loop {
            if offset >= len {
                break Ok(());
            }
            // A buffer neither hashing thread still holds, a new one, or wait for one.
            let free = pool.iter().position(|b| Arc::strong_count(b) == 1);
            let i = match free {
                Some(i) => i,
                None if pool.len() < READ_DEPTH + 1 => {
                    pool.push(Arc::new(AlignedBuf::new(CHUNK)));
                    pool.len() - 1
                }
                None => match released.recv() {
                    Ok(()) => continue,
                    Err(_) => break Ok(()),
                },
            };
            let Some(buf) = Arc::get_mut(&mut pool[i]) else {
                continue;
            };
            let n = usize::try_from(len - offset).unwrap_or(CHUNK).min(CHUNK);
            // Round the last read up to whole 4 KiB blocks (inside the partition) so that it
            // too can be direct; only `n` bytes are used.
            let aligned = n.next_multiple_of(ALIGN);
            let want = if offset + aligned as u64 <= part.size() {
                aligned
            } else {
                n
            };
            if let Err(e) = part.read_exact_at(&mut buf.as_mut_slice()[..want], offset) {
                break Err(format!("reading {want} bytes at offset {offset}: {e}"));
            }
            let chunk = &pool[i];
            if sha_tx.send((chunk.clone(), n)).is_err()
                || verity_tx.send((chunk.clone(), n)).is_err()
            {
                // A hashing thread stopped: its result says why.
                break Ok(());
            }
            offset += n as u64;
        };
        drop((sha_tx, verity_tx));
        let digest = hashing
            .join()
            .map_err(|_| "the hashing thread panicked".to_string());
        let checked = checking
            .join()
            .map_err(|_| "the verity thread panicked".to_string());
        (digest, checked, read)
    });
    read.map_err(&fail)?;
    checked
        .map_err(&fail)?
        .map_err(|e| fail(crate::error_chain(&e)))?;
    let digest = digest.map_err(&fail)?;
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
