//! Step 7 of an install ([`crate::install`]): reading a written slot back. The rootfs is read
//! in one sequential pass (direct I/O where the partition takes it) that feeds the dm-verity
//! check of every data and hash block, hashed on two cores, and the sha256 of the whole image
//! where that check does not cover every byte ([`verify_rootfs`]); boot files and Jetson
//! partition ranges are re-read and hashed. Where the slot takes direct reads and the image
//! has a build's layout, the rootfs's pass runs during the stream instead, each chunk read
//! back from the medium once its write returned ([`follow_rootfs`]).
//! The install drops the partition's cached pages first, so that even without direct I/O the
//! bytes come from the medium, not from the page cache the writes just filled.

use std::path::Path;
use std::sync::mpsc::{channel, sync_channel, Receiver};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use aperture_slots::Slot;
use aperture_trust::manifest::{Artifact, Sha256Hex};
use aperture_trust::verity::{VerityCheck, VERITY_BLOCK_SIZE};

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

/// A chunk read back: its buffer and how many of its bytes are the image's.
type Chunk = (Arc<AlignedBuf>, usize);

/// Read the rootfs back once: the full dm-verity check and, unless that check covers every
/// byte of the artifact, its sha256 too.
///
/// This thread reads the partition in order, [`CHUNK`] at a time into buffers aligned for
/// `O_DIRECT` (so, where the partition takes it, from the medium and never from the page
/// cache), while two threads hash on two cores. A build's `rootfs.img` is its data blocks
/// followed at once by the dm-verity superblock and hash tree, which [`VerityCheck`] checks
/// whole (each data block hashed into the tree, the superblock and its zero padding, every
/// stored hash block, the root against the signed one): then the artifact's sha256 would
/// say nothing more of the bytes on the medium (the stream checked the decoded bytes'
/// sha256 as they were written), so both threads hash data blocks, alternate chunks each,
/// for the check. Any other layout (a gap before the hash area, bytes after the tree) keeps
/// the sha256 of the whole artifact on one thread and the check on the other. At most
/// [`READ_DEPTH`] chunks are in flight.
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
    let digest = if check.covers_every_byte() && rootfs.size == verity_end {
        verity_on_two_threads(part, check, Reads::AfterSync).map_err(&fail)?;
        None
    } else {
        Some(verity_and_sha256(part, check, rootfs.size, len).map_err(&fail)?)
    };
    if let Some(digest) = digest {
        if digest != rootfs.sha256 {
            return Err(fail(format!(
                "sha256 is {digest}, the manifest says {}",
                rootfs.sha256
            )));
        }
    }
    Ok(())
}

/// Whether the rootfs `rootfs` can be read back by [`follow_rootfs`] from `part` (a second
/// handle on the slot being written): the partition takes direct reads, the image has the
/// build's layout (the full dm-verity check alone covers every byte of it) and fits.
pub(crate) fn can_follow(part: &dyn PartitionHandle, rootfs: &Artifact) -> bool {
    let Some(check) = rootfs
        .verity
        .as_ref()
        .and_then(|v| VerityCheck::new(v).ok())
    else {
        return false;
    };
    part.reads_direct()
        && check.covers_every_byte()
        && rootfs.size == check.end()
        && check.end() <= part.size()
}

/// Read the rootfs back while it is streamed in: each chunk as soon as the stream's writes
/// reached its end (`written` carries the end of every finished write, and closes when the
/// writing stops), with direct reads only, into the full dm-verity check hashed on two
/// threads, as [`verify_rootfs`] does after the sync. A direct write has returned only once
/// the device took the bytes, and a direct read returns what the device holds: the bytes
/// are read from the medium, not the page cache, and the sync that follows the writes
/// changes where the device keeps them, not what it returns. So the read-back of a slot
/// image overlaps the stream instead of following it.
///
/// For images [`can_follow`] accepts. `Err` says why the check did not pass (a direct read
/// refused, the stream stopped early, bytes that do not match): the install then reads the
/// slot back after the sync as before, whose verdict stands.
pub(crate) fn follow_rootfs(
    part: &dyn PartitionHandle,
    rootfs: &Artifact,
    written: Receiver<u64>,
) -> Result<(), String> {
    let verity = rootfs
        .verity
        .as_ref()
        .ok_or("the manifest gives no verity parameters")?;
    let check = VerityCheck::new(verity).map_err(|e| crate::error_chain(&e))?;
    verity_on_two_threads(part, check, Reads::Following(written))
}

/// How [`read_in_order`] reads.
enum Reads {
    /// After the writes and the sync, with direct reads where the partition takes them
    /// (the install dropped the cached pages first).
    AfterSync,
    /// Behind a stream's writes, direct reads only: each chunk once the writes reached its
    /// end (the ends come on the channel).
    Following(Receiver<u64>),
}

/// The check alone, its data blocks hashed on two threads (even chunks on one, odd on the
/// other) and fed to the check in order on a third.
fn verity_on_two_threads(
    part: &dyn PartitionHandle,
    check: VerityCheck,
    reads: Reads,
) -> Result<(), String> {
    let len = check.end();
    let data_end = check.data_end();
    let hasher = check.block_hasher();
    std::thread::scope(|scope| {
        let (released_tx, released) = channel::<()>();
        let mut to_hash = Vec::new();
        let mut hashed = Vec::new();
        for _ in 0..2 {
            let (tx, rx) = sync_channel::<(u64, Chunk)>(READ_DEPTH / 2);
            let (done_tx, done_rx) = sync_channel::<(Chunk, Vec<[u8; 32]>)>(READ_DEPTH / 2);
            let hasher = hasher.clone();
            scope.spawn(move || {
                for (offset, (buf, n)) in rx {
                    let blocks = data_end.saturating_sub(offset).min(n as u64);
                    let mut digests = Vec::new();
                    let blocks = usize::try_from(blocks.div_ceil(u64::from(VERITY_BLOCK_SIZE)))
                        .unwrap_or(usize::MAX);
                    hasher.digests(&buf.as_slice()[..n], blocks, &mut digests);
                    if done_tx.send(((buf, n), digests)).is_err() {
                        break;
                    }
                }
            });
            to_hash.push(tx);
            hashed.push(done_rx);
        }
        let checking = scope.spawn(move || {
            let mut check = check;
            // The chunks come back in the order they went out: alternately from each thread.
            for i in 0.. {
                let Ok(((buf, n), digests)) = hashed[i % 2].recv() else {
                    break;
                };
                let fed = check.update_hashed(&buf.as_slice()[..n], &digests);
                drop(buf);
                let _ = released_tx.send(());
                fed?;
            }
            check.finish()
        });
        let mut i = 0;
        let read = read_in_order(part, len, &reads, &released, |offset, chunk| {
            let sent = to_hash[i % 2].send((offset, chunk)).is_ok();
            i += 1;
            sent
        });
        drop(to_hash);
        let checked = checking
            .join()
            .map_err(|_| "the verity thread panicked".to_string())?;
        read?;
        checked.map_err(|e| crate::error_chain(&e))
    })
}

/// The check on one thread and the sha256 of the artifact's `size` bytes on another; returns
/// the digest.
fn verity_and_sha256(
    part: &dyn PartitionHandle,
    check: VerityCheck,
    size: u64,
    len: u64,
) -> Result<Sha256Hex, String> {
    let verity_end = check.end();
    let (digest, checked, read) = std::thread::scope(|scope| {
        let (sha_tx, sha_rx) = sync_channel::<Chunk>(READ_DEPTH);
        let (verity_tx, verity_rx) = sync_channel::<Chunk>(READ_DEPTH);
        let (released_tx, released) = channel::<()>();
        let released_sha = released_tx.clone();
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
        let read = read_in_order(part, len, &Reads::AfterSync, &released, |_, (chunk, n)| {
            // A hashing thread that stopped says why in its result.
            sha_tx.send((chunk.clone(), n)).is_ok() && verity_tx.send((chunk, n)).is_ok()
        });
        drop((sha_tx, verity_tx));
        let digest = hashing
            .join()
            .map_err(|_| "the hashing thread panicked".to_string());
        let checked = checking
            .join()
            .map_err(|_| "the verity thread panicked".to_string());
        (digest, checked, read)
    });
    read?;
    checked?.map_err(|e| crate::error_chain(&e))?;
    digest
}

/// Read `len` bytes of `part` from offset 0 in order, [`CHUNK`] at a time, into at most
/// [`READ_DEPTH`] + 1 aligned buffers, and hand each to `send` with its offset; a buffer is
/// reused once every holder dropped it (each holder sends on `released` when it does). Stops
/// early when `send` returns false (a consumer stopped: its result says why).
fn read_in_order(
    part: &dyn PartitionHandle,
    len: u64,
    reads: &Reads,
    released: &Receiver<()>,
    mut send: impl FnMut(u64, Chunk) -> bool,
) -> Result<(), String> {
    let mut pool: Vec<Arc<AlignedBuf>> = Vec::new();
    let mut offset = 0u64;
    let mut written = 0u64;
    while offset < len {
        // A buffer no consumer still holds, a new one, or wait for one.
        let free = pool.iter().position(|b| Arc::strong_count(b) == 1);
        let i = match free {
            Some(i) => i,
            None if pool.len() < READ_DEPTH + 1 => {
                pool.push(Arc::new(AlignedBuf::new(CHUNK)));
                pool.len() - 1
            }
            None => match released.recv() {
                Ok(()) => continue,
                Err(_) => return Ok(()),
            },
        };
        let Some(buf) = Arc::get_mut(&mut pool[i]) else {
            continue;
        };
        let n = usize::try_from(len - offset).unwrap_or(CHUNK).min(CHUNK);
        // Round the last read up to whole 4 KiB blocks (inside the partition) so that it too
        // can be direct; only `n` bytes are used.
        let aligned = n.next_multiple_of(ALIGN);
        let want = if offset + aligned as u64 <= part.size() {
            aligned
        } else {
            n
        };
        let buf = &mut buf.as_mut_slice()[..want];
        match reads {
            Reads::AfterSync => part.read_exact_at(buf, offset),
            Reads::Following(ends) => {
                while written < offset + n as u64 {
                    match ends.recv() {
                        Ok(end) => written = written.max(end),
                        Err(_) => {
                            return Err(format!(
                                "the stream stopped writing at byte {written}, before byte {}",
                                offset + n as u64
                            ))
                        }
                    }
                }
                part.read_direct_at(buf, offset)
            }
        }
        .map_err(|e| format!("reading {want} bytes at offset {offset}: {e}"))?;
        if !send(offset, (pool[i].clone(), n)) {
            return Ok(());
        }
        offset += n as u64;
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

#[cfg(test)]
mod tests {
    use super::*;
    use aperture_trust::manifest::{ArtifactName, Role};
    use aperture_trust::verity::append_hash_tree;
    use std::io;

    /// A partition in memory.
    struct MemPart(Vec<u8>);

    impl PartitionHandle for MemPart {
        fn label(&self) -> &str {
            "rootfs_b"
        }
        fn describe(&self) -> String {
            "mem:rootfs_b".into()
        }
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let at = usize::try_from(offset).unwrap();
            let src = self.0.get(at..at + buf.len()).ok_or_else(|| {
                io::Error::new(io::ErrorKind::UnexpectedEof, "past the partition's end")
            })?;
            buf.copy_from_slice(src);
            Ok(())
        }
        fn write_all_at(&mut self, _: &[u8], _: u64) -> io::Result<()> {
            unreachable!("the read-back writes nothing")
        }
        fn sync(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// An image of three and a half read chunks with its tree appended, and its artifact;
    /// `trailing` bytes of another file after the tree belong to the artifact too.
    fn image(trailing: usize) -> (Vec<u8>, Artifact) {
        let blocks = 3 * CHUNK / 4096 + 512;
        let data: Vec<u8> = (0..blocks)
            .flat_map(|i| vec![if i % 7 == 0 { 0 } else { (i % 251) as u8 }; 4096])
            .collect();
        let mut file = tempfile::tempfile().unwrap();
        io::Write::write_all(&mut file, &data).unwrap();
        let verity = append_hash_tree(&mut file, data.len() as u64, b"salt", [9; 16]).unwrap();
        let mut img = Vec::new();
        io::Seek::rewind(&mut file).unwrap();
        io::Read::read_to_end(&mut file, &mut img).unwrap();
        img.extend((0..trailing).map(|i| (i % 13) as u8 + 1));
        let artifact = Artifact {
            name: ArtifactName::new("rootfs.img").unwrap(),
            role: Role::Rootfs,
            size: img.len() as u64,
            sha256: Sha256Hex::digest(&img),
            verity: Some(verity),
            payload: None,
        };
        (img, artifact)
    }

    fn read_back(img: &[u8], artifact: &Artifact) -> Result<(), String> {
        // The partition is bigger than the image, as a slot is.
        let mut part = img.to_vec();
        part.resize(img.len() + 3 * 4096 + 100, 0xee);
        verify_rootfs(&MemPart(part), artifact, Slot::B).map_err(|e| crate::error_chain(&e))
    }

    /// A build's layout (the tree right after the data, nothing after it): the check alone on
    /// two threads finds a flipped bit in every chunk, in the superblock's padding and in the
    /// tree; an intact image passes.
    #[test]
    fn the_check_alone_covers_every_byte_of_a_builds_layout() {
        let (img, artifact) = image(0);
        read_back(&img, &artifact).unwrap();
        let data_end = artifact.verity.as_ref().unwrap().data_size() as usize;
        for (at, what) in [
            (10, "level 0"),
            (CHUNK + 4097, "level 0"),
            (3 * CHUNK + 5, "level 0"),
            (data_end + 1000, "superblock"),
            (data_end + 2 * 4096 + 64, "level"),
            (img.len() - 1, "level 0"),
        ] {
            let mut bad = img.clone();
            bad[at] ^= 0x10;
            let err = read_back(&bad, &artifact).unwrap_err();
            assert!(
                err.contains(what) && err.contains("mem:rootfs_b"),
                "{at}: {err}"
            );
        }
    }

    /// Bytes after the tree are not under the check: the sha256 of the whole artifact is
    /// read back beside it, and a flip there fails.
    #[test]
    fn bytes_the_check_does_not_cover_are_hashed_too() {
        let (img, artifact) = image(5000);
        read_back(&img, &artifact).unwrap();
        let mut bad = img.clone();
        *bad.last_mut().unwrap() ^= 1;
        let err = read_back(&bad, &artifact).unwrap_err();
        assert!(err.contains("sha256 is"), "{err}");
        let mut bad = img.clone();
        bad[CHUNK + 9] ^= 1;
        let err = read_back(&bad, &artifact).unwrap_err();
        assert!(err.contains("level 0"), "{err}");
    }
}
