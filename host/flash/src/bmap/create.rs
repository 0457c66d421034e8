//! Mapping a sparse image file: data extents from `SEEK_DATA` / `SEEK_HOLE`, then every block
//! inside them checked for zeros, adjacent non-zero blocks merged into hashed ranges.
//!
//! bmaptool maps allocated extents (FIEMAP); we map the same extents less their all-zero
//! blocks, so the result depends only on the file's contents (an image copied with
//! `cp --sparse=never` maps the same), and is never larger than bmaptool's.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use rustix::fs::SeekFrom;
use rustix::io::Errno;

use super::{Bmap, BmapRange, ChecksumType, Hasher};
use crate::error::{FlashError, Result};

/// How much is read at a time (rounded up to a whole block).
const READ_CHUNK: u64 = 1 << 20;

pub(super) fn from_sparse_file(path: &Path, block_size: u32) -> Result<Bmap> {
    let bad = |reason: String| FlashError::BmapImage {
        path: path.to_path_buf(),
        reason,
    };
    if block_size < 512 || !block_size.is_power_of_two() {
        return Err(bad(format!(
            "block size {block_size} is not a power of two of at least 512"
        )));
    }
    let file = File::open(path)
        .map_err(|e| FlashError::io(format!("opening image {}", path.display()), e))?;
    let metadata = file
        .metadata()
        .map_err(|e| FlashError::io(format!("reading metadata of {}", path.display()), e))?;
    if !metadata.is_file() {
        return Err(bad("it is not a regular file".to_string()));
    }
    let image_size = metadata.len();
    if image_size == 0 {
        return Err(bad("it is empty".to_string()));
    }
    let bs = u64::from(block_size);
    let checksum_type = ChecksumType::Sha256;

    let mut ranges = RangeBuilder::new(checksum_type);
    let chunk = READ_CHUNK.max(bs) / bs * bs;
    let mut buf = vec![0u8; chunk as usize];
    let zero = vec![0u8; block_size as usize];
    let mut next_block = 0; // first block not yet looked at
    for (start, end) in data_extents(&file, image_size, path)? {
        // Extents need not be block aligned when blocks are larger than the file system's.
        let mut offset = (start / bs).max(next_block) * bs;
        let stop = end.div_ceil(bs).saturating_mul(bs).min(image_size);
        while offset < stop {
            let len = (stop - offset).min(chunk) as usize;
            file.read_exact_at(&mut buf[..len], offset).map_err(|e| {
                FlashError::io(format!("reading {} at byte {offset}", path.display()), e)
            })?;
            for (i, block) in buf[..len].chunks(block_size as usize).enumerate() {
                let number = offset / bs + i as u64;
                if block == &zero[..block.len()] {
                    ranges.gap();
                } else {
                    ranges.push(number, block);
                }
            }
            offset += len as u64;
        }
        next_block = stop.div_ceil(bs);
        // No gap() here: `push` starts a new range when the next data block does not follow,
        // and extents that meet inside one block must still merge.
    }
    let ranges = ranges.finish();
    Ok(Bmap {
        image_size,
        block_size,
        blocks_count: image_size.div_ceil(bs),
        mapped_blocks_count: ranges.iter().map(BmapRange::blocks).sum(),
        checksum_type: Some(checksum_type),
        ranges,
    })
}

/// The file's data extents as `(start, end)` byte offsets, ascending, end exclusive.
///
/// Linux implements `SEEK_DATA`/`SEEK_HOLE` for every file system (those without holes report
/// the whole file as data); `EINVAL` from an odd one is taken the same way.
fn data_extents(file: &File, size: u64, path: &Path) -> Result<Vec<(u64, u64)>> {
    let io = |what: &str, offset: u64, e: Errno| {
        FlashError::io(
            format!("{what} in {} from byte {offset}", path.display()),
            e.into(),
        )
    };
    let mut extents = Vec::new();
    let mut offset = 0u64;
    while offset < size {
        let signed = i64::try_from(offset).unwrap_or(i64::MAX);
        let data = match rustix::fs::seek(file, SeekFrom::Data(signed)) {
            Ok(data) => data,
            Err(Errno::NXIO) => break, // no data after offset
            Err(Errno::INVAL) if offset == 0 => return Ok(vec![(0, size)]),
            Err(e) => return Err(io("seeking data", offset, e)),
        };
        if data >= size {
            break;
        }
        let signed = i64::try_from(data).unwrap_or(i64::MAX);
        let hole = match rustix::fs::seek(file, SeekFrom::Hole(signed)) {
            Ok(hole) => hole.min(size),
            Err(e) => return Err(io("seeking a hole", data, e)),
        };
        if hole <= data {
            // Cannot happen on a sane file system; avoid looping forever if it does.
            extents.push((data, size));
            break;
        }
        extents.push((data, hole));
        offset = hole;
    }
    Ok(extents)
}

/// Collects consecutive non-zero blocks into ranges, hashing each range as it grows.
struct RangeBuilder {
    checksum_type: ChecksumType,
    open: Option<(u64, u64, Hasher)>,
    done: Vec<BmapRange>,
}

impl RangeBuilder {
    fn new(checksum_type: ChecksumType) -> RangeBuilder {
        RangeBuilder {
            checksum_type,
            open: None,
            done: Vec::new(),
        }
    }

    /// A non-zero block: extends the open range if it follows it, else starts a new one.
    fn push(&mut self, number: u64, bytes: &[u8]) {
        match &mut self.open {
            Some((_, last, hasher)) if *last + 1 == number => {
                *last = number;
                hasher.update(bytes);
            }
            _ => {
                self.gap();
                let mut hasher = self.checksum_type.hasher();
                hasher.update(bytes);
                self.open = Some((number, number, hasher));
            }
        }
    }

    /// A zero block or a hole: closes the open range.
    fn gap(&mut self) {
        if let Some((first, last, hasher)) = self.open.take() {
            self.done.push(BmapRange {
                first,
                last,
                checksum: Some(hasher.finish_hex()),
            });
        }
    }

    fn finish(mut self) -> Vec<BmapRange> {
        self.gap();
        self.done
    }
}
