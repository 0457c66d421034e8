//! Buffers for direct I/O: `O_DIRECT` reads and writes need the memory address, the file
//! offset and the length aligned to the device's logical block size (open(2), "O_DIRECT";
//! at most 4096 on the block devices and file systems we write). Made without `unsafe` by
//! over-allocating and starting at the first aligned byte.

/// Alignment of every direct read and write: the largest logical block size in use.
pub const ALIGN: usize = 4096;

/// A zeroed byte buffer whose first byte is [`ALIGN`]-aligned.
#[derive(Debug)]
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A buffer of `len` bytes.
    pub fn new(len: usize) -> AlignedBuf {
        let storage = vec![0u8; len + ALIGN];
        let misalign = storage.as_ptr() as usize % ALIGN;
        let start = if misalign == 0 { 0 } else { ALIGN - misalign };
        AlignedBuf {
            storage,
            start,
            len,
        }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// Whether a transfer of `buf` at byte `offset` can be done with `O_DIRECT`.
pub fn is_aligned(buf: &[u8], offset: u64) -> bool {
    (buf.as_ptr() as usize).is_multiple_of(ALIGN)
        && buf.len().is_multiple_of(ALIGN)
        && offset.is_multiple_of(ALIGN as u64)
        && !buf.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_are_aligned_and_sized() {
        for len in [4096, 1 << 20, 3 * 4096] {
            let mut b = AlignedBuf::new(len);
            assert_eq!(b.as_slice().len(), len);
            assert!(is_aligned(b.as_slice(), 8192));
            b.as_mut_slice()[len - 1] = 7;
            assert_eq!(b.as_slice()[len - 1], 7);
            assert!(!is_aligned(b.as_slice(), 512));
            assert!(!is_aligned(&b.as_slice()[1..], 0));
            assert!(!is_aligned(&b.as_slice()[..100], 0));
        }
    }
}
