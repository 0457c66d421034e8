//! The writes of an install ([`crate::install`] documents their order): the slot's staging
//! folder on the ESP, the free-space check made before anything is written, streaming a payload
//! into a partition or a file, and the small helpers around them. Every write, fsync, rename and
//! removal goes through [`crate::io::Io`].

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Sender};

use aperture_slots::Slot;

use crate::aligned::AlignedBuf;
use crate::disk::PartitionHandle;
use crate::io::Io;
use crate::place::{Dest, Placement};
use crate::{UpdateError, Updater};

/// Size of every write of a payload to a partition and of every read-back read: large, so
/// that each is one request the device can merge, and a multiple of [`crate::aligned::ALIGN`].
pub const CHUNK: usize = 4 << 20;

impl Updater {
    /// The target's folder on the ESP, where its boot files are staged: made if missing, and
    /// rid of the temporary files an earlier install cut off left.
    pub(crate) fn prepare_slot_dir(&self, slot_dir: &Path) -> Result<(), UpdateError> {
        let io = &*self.io;
        if !slot_dir.is_dir() {
            io.create_dir_all(slot_dir)
                .map_err(UpdateError::file("creating folder", slot_dir))?;
        }
        let leftovers = leftover_tmp(slot_dir);
        for (path, _) in &leftovers {
            tracing::info!("removing {}, left by an install cut off", path.display());
            io.remove(path)
                .map_err(UpdateError::file("removing", path))?;
        }
        if !leftovers.is_empty() {
            io.sync_dir(slot_dir)
                .map_err(UpdateError::file("syncing folder", slot_dir))?;
        }
        Ok(())
    }

    /// Refuse, before anything is written, boot files the ESP has no room for: the files
    /// staged on it (kernel and initrd, or a capsule) while the old ones are still in place.
    /// Temporary files an earlier install left count as free: they go first.
    pub(crate) fn check_esp_space(
        &self,
        place: &Placement<'_>,
        target: Slot,
    ) -> Result<(), UpdateError> {
        let sizes: Vec<u64> = place
            .dests
            .iter()
            .filter(|(_, d)| matches!(d, Dest::EspFile(_) | Dest::Capsule))
            .map(|(a, _)| a.size)
            .collect();
        if sizes.is_empty() {
            return Ok(());
        }
        let esp = &self.paths.esp;
        let space = self
            .io
            .space(esp)
            .map_err(UpdateError::file("finding the free space of", esp))?;
        let needed: u64 = sizes.iter().map(|s| space.allocation(*s)).sum();
        let reclaimable: u64 = leftover_tmp(&self.paths.slot_dir(target))
            .iter()
            .map(|(_, len)| space.allocation(*len))
            .sum();
        let free = space.free.saturating_add(reclaimable);
        if needed > free {
            return Err(UpdateError::EspFull {
                path: esp.clone(),
                slot: target,
                needed,
                free,
            });
        }
        Ok(())
    }
}

/// The `*.tmp` files in `dir` and their sizes (none if `dir` is missing).
fn leftover_tmp(dir: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(PathBuf, u64)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .filter_map(|e| Some((e.path(), e.metadata().ok().filter(|m| m.is_file())?.len())))
        .collect();
    found.sort();
    found
}

/// A verified header document as text (JSON is UTF-8, so a verified one always is).
pub(crate) fn text(bytes: Vec<u8>, what: &str) -> Result<String, UpdateError> {
    String::from_utf8(bytes).map_err(|e| UpdateError::Malformed {
        path: PathBuf::from(what),
        reason: format!("{e}: not UTF-8"),
    })
}

/// Fill `buf` from `r` as far as it goes; the count (less than `buf.len()` only at the end).
pub(crate) fn fill(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn payload_error(e: io::Error) -> UpdateError {
    UpdateError::File {
        op: "reading payload from",
        path: PathBuf::from("the bundle"),
        source: e,
    }
}

/// How much a stream writes through the page cache (a file system without `O_DIRECT`)
/// before it asks the kernel to start writing it back.
const WRITEBACK_WINDOW: u64 = 32 << 20;
/// Chunks in flight between the decoding thread and the writing thread.
const DEPTH: usize = 3;

/// Stream a payload into the partition from `start`, then fsync; returns the bytes written.
///
/// Two threads and a bounded queue: the caller's thread reads the payload (the bundle reader
/// decompresses and hashes it there, the decoded hash on a thread of its own) into 4 MiB
/// buffers aligned for `O_DIRECT`, and a writer thread writes each one with one positional
/// write (through [`Io::write_at`], in order, so a power-cut test counts the same writes)
/// while the next is decoded. At most [`DEPTH`] chunks wait, so memory stays at a few
/// buffers. Where the partition takes direct I/O the writes bypass the page cache; elsewhere
/// writeback is started every [`WRITEBACK_WINDOW`]. The fsync comes after the last write.
/// If the payload fails, the writer stops without writing what is still queued and without
/// the fsync, and the payload's error is returned.
pub(crate) fn write_partition(
    io: &dyn Io,
    part: &mut dyn PartitionHandle,
    payload: &mut dyn Read,
    slot: Slot,
    start: u64,
) -> Result<u64, UpdateError> {
    write_partition_told(io, part, payload, slot, start, None)
}

/// [`write_partition`], telling `written` the end offset of every write once it returned
/// (for a read-back that follows the stream, [`crate::readback::follow_rootfs`]); the
/// channel closes when the writing stops.
pub(crate) fn write_partition_told(
    io: &dyn Io,
    part: &mut dyn PartitionHandle,
    payload: &mut dyn Read,
    slot: Slot,
    start: u64,
    written: Option<Sender<u64>>,
) -> Result<u64, UpdateError> {
    let device = part.describe();
    let fail = |op: &'static str| {
        let device = device.clone();
        move |source| UpdateError::Partition {
            op,
            slot,
            device,
            source,
        }
    };
    let abort = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (full_tx, full_rx) = sync_channel::<(AlignedBuf, usize, u64)>(DEPTH);
        let (free_tx, free_rx) = sync_channel::<AlignedBuf>(DEPTH + 1);
        let abort = &abort;
        let writer = scope.spawn(move || -> Result<(), UpdateError> {
            let mut flushed = start;
            for (buf, n, offset) in full_rx {
                if abort.load(Ordering::Acquire) {
                    return Ok(());
                }
                io.write_at(part, &buf.as_slice()[..n], offset)
                    .map_err(fail("writing"))?;
                let end = offset + n as u64;
                if let Some(w) = &written {
                    // The follower may have stopped: its result says why.
                    let _ = w.send(end);
                }
                if !part.reads_direct() && end - flushed >= WRITEBACK_WINDOW {
                    // Best effort: a failure here changes nothing; the sync below counts.
                    let _ = part.start_writeback(flushed, end - flushed);
                    flushed = end;
                }
                // The producer may have stopped already.
                let _ = free_tx.send(buf);
            }
            if abort.load(Ordering::Acquire) {
                return Ok(());
            }
            io.sync(part).map_err(fail("syncing"))
        });
        let mut offset = start;
        let mut made = 0;
        let produced = loop {
            let mut buf = match free_rx.try_recv() {
                Ok(buf) => buf,
                Err(_) if made < DEPTH + 1 => {
                    made += 1;
                    AlignedBuf::new(CHUNK)
                }
                Err(_) => match free_rx.recv() {
                    Ok(buf) => buf,
                    // The writer stopped: its error is the one to report.
                    Err(_) => break Ok(()),
                },
            };
            let n = match fill(payload, buf.as_mut_slice()) {
                Ok(n) => n,
                Err(e) => {
                    abort.store(true, Ordering::Release);
                    break Err(payload_error(e));
                }
            };
            if n == 0 {
                break Ok(());
            }
            if full_tx.send((buf, n, offset)).is_err() {
                break Ok(());
            }
            offset += n as u64;
            if n < CHUNK {
                break Ok(());
            }
        };
        drop(full_tx);
        let written = writer.join().unwrap_or_else(|_| {
            Err(fail("writing")(io::Error::other(
                "the writing thread panicked",
            )))
        });
        produced.and(written).map(|()| offset - start)
    })
}

/// Stream a boot file into `path` (a `.tmp` name), then fsync it.
pub(crate) fn write_file(
    io: &dyn Io,
    path: &Path,
    payload: &mut dyn Read,
) -> Result<(), UpdateError> {
    let mut f = io
        .create(path)
        .map_err(UpdateError::file("creating", path))?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = fill(payload, &mut buf).map_err(payload_error)?;
        if n == 0 {
            break;
        }
        io.write(&mut f, path, &buf[..n])
            .map_err(UpdateError::file("writing", path))?;
        if n < buf.len() {
            break;
        }
    }
    io.sync_file(&f, path)
        .map_err(UpdateError::file("syncing", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{Disk, FileDisk};
    use crate::io::FaultIo;
    use std::fs::File;

    /// A GPT disk image with a 16 MiB `rootfs_b`, in a folder beside the sources (a disk file
    /// system, which takes `O_DIRECT`; `/tmp` may be a tmpfs, which before Linux 6.6 does not).
    fn disk() -> (tempfile::TempDir, FileDisk) {
        use aperture_gpt::{write_gpt, Guid, Layout, PartitionSpec};
        let d = tempfile::Builder::new()
            .prefix(".test-direct-")
            .tempdir_in(env!("CARGO_MANIFEST_DIR"))
            .unwrap();
        let path = d.path().join("disk.img");
        let size = 20u64 << 20;
        let mut f = File::create(&path).unwrap();
        f.set_len(size).unwrap();
        let layout = Layout::new(
            Guid::derive("w", "disk"),
            vec![PartitionSpec::new(
                "rootfs_b",
                Guid::LINUX_FILESYSTEM,
                Guid::derive("w", "b"),
                16 << 20,
            )],
        );
        write_gpt(&mut f, size, &layout).unwrap();
        (d, FileDisk::new(path))
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 253) as u8).collect()
    }

    /// A payload that fails after `good` bytes, as a tampered bundle's does.
    struct FailsAfter(Vec<u8>, usize);

    impl Read for FailsAfter {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.1 >= self.0.len() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "hash mismatch"));
            }
            let n = buf.len().min(self.0.len() - self.1);
            buf[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
            self.1 += n;
            Ok(n)
        }
    }

    #[test]
    fn a_stream_is_written_whole_and_in_order_through_the_io_seam() {
        let (_d, disk) = disk();
        let mut part = disk.open("rootfs_b").unwrap();
        let payload = pattern(2 * CHUNK + (1 << 20) + 123);
        let io = FaultIo::counting();
        let n = write_partition(&io, &mut *part, &mut &payload[..], Slot::B, 4096).unwrap();
        assert_eq!(n, payload.len() as u64);
        let mut back = vec![0u8; payload.len()];
        part.read_exact_at(&mut back, 4096).unwrap();
        assert!(back == payload, "the partition holds something else");
        let log = io.log();
        assert_eq!(log.len(), 4, "{log:#?}");
        for (i, at) in [4096, 4096 + CHUNK, 4096 + 2 * CHUNK].iter().enumerate() {
            assert!(log[i].contains(&format!("at {at} of rootfs_b")), "{log:#?}");
        }
        assert!(log[3].contains("fsync rootfs_b"), "{log:#?}");
    }

    #[test]
    fn a_failing_payload_is_the_error_and_is_never_synced() {
        let (_d, disk) = disk();
        let mut part = disk.open("rootfs_b").unwrap();
        let io = FaultIo::counting();
        let mut payload = FailsAfter(pattern(CHUNK + 5000), 0);
        let err = write_partition(&io, &mut *part, &mut payload, Slot::B, 0).unwrap_err();
        assert!(
            matches!(err, UpdateError::File { op, .. } if op == "reading payload from"),
            "{err}"
        );
        let log = io.log();
        assert!(!log.iter().any(|l| l.contains("fsync")), "{log:#?}");
    }

    #[test]
    fn a_cut_write_is_the_error_and_nothing_runs_after_it() {
        let (_d, disk) = disk();
        let mut part = disk.open("rootfs_b").unwrap();
        let io = FaultIo::crash_at(2);
        let payload = pattern(3 * CHUNK);
        let err = write_partition(&io, &mut *part, &mut &payload[..], Slot::B, 0).unwrap_err();
        assert!(
            matches!(err, UpdateError::Partition { op: "writing", .. }),
            "{err}"
        );
        assert!(io.crashed_at().unwrap().contains(&format!("at {CHUNK}")));
        assert_eq!(io.log().len(), 2, "{:#?}", io.log());
    }
}
