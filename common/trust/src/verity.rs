//! dm-verity hash trees, byte for byte as `veritysetup format` writes them when the tree is
//! appended to the data in the same file:
//!
//! ```text
//! veritysetup format FILE FILE --hash-offset=DATA_SIZE --salt=HEX --uuid=UUID
//! ```
//!
//! Only format (hash type) 1 with sha256 and 4096-byte data and hash blocks is supported.
//!
//! Layout after the data, at `hash_offset`: one 4096-byte block holding the 512-byte verity
//! superblock (cryptsetup `lib/verity/verity.c`, `struct verity_sb`, little-endian) and zero
//! padding; then the hash levels, TOP level first. The kernel (`drivers/md/dm-verity-target.c`,
//! `hash_level_block[]`) and cryptsetup (`hash_levels()`) place level `levels-1` first and level
//! 0 (the hashes of the data blocks) last. Each hash is sha256(salt || block); hash blocks are
//! zero padded; the root hash is sha256(salt || the single top-level block), or, for data of one
//! block (zero levels), sha256(salt || that data block).
//!
//! All functions stream: memory use is one read buffer plus one partial block per level, and
//! for the check ([`VerityCheck`], [`verify_device`]) 32 bytes per hash block of the tree.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use crate::digest::Sha256Hex;
use crate::TrustError;

/// Data and hash block size, bytes.
pub const VERITY_BLOCK_SIZE: u32 = 4096;
/// Longest salt dm-verity's superblock holds, bytes.
pub const MAX_SALT_LEN: usize = 256;

const BLOCK: usize = VERITY_BLOCK_SIZE as usize;
const BLOCK_U64: u64 = VERITY_BLOCK_SIZE as u64;
const DIGEST_LEN: usize = 32;
/// log2(4096 / 32): hashes per hash block, as cryptsetup's `hash_per_block_bits`.
const HASH_PER_BLOCK_BITS: u32 = 7;
const SUPERBLOCK_LEN: usize = 512;
/// Data read per call: 256 blocks.
const CHUNK: usize = 256 * BLOCK;

/// The dm-verity parameters of a rootfs image, as recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerityInfo {
    /// Root hash: what the kernel command line pins.
    pub root_hash: Sha256Hex,
    /// Salt, lowercase hex (empty for none), at most 256 bytes.
    pub salt: String,
    /// Byte offset of the verity superblock; the tree follows one block later.
    pub hash_offset: u64,
    /// Number of data blocks covered.
    pub data_blocks: u64,
    /// Data block size, 4096.
    pub data_block_size: u32,
    /// Hash block size, 4096.
    pub hash_block_size: u32,
    /// Hash algorithm, "sha256".
    pub algorithm: String,
    /// UUID stored in the superblock, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    pub uuid: String,
}

impl VerityInfo {
    /// Size of the protected data in bytes.
    pub fn data_size(&self) -> u64 {
        self.data_blocks.saturating_mul(BLOCK_U64)
    }

    /// The salt bytes.
    pub fn salt_bytes(&self) -> Result<Vec<u8>, TrustError> {
        if self.salt.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(TrustError::malformed(
                "verity salt",
                "must be lowercase hex",
            ));
        }
        let salt = hex::decode(&self.salt).map_err(|e| TrustError::malformed("verity salt", e))?;
        check_salt(&salt)?;
        Ok(salt)
    }

    /// The UUID bytes.
    pub fn uuid_bytes(&self) -> Result<[u8; 16], TrustError> {
        parse_uuid(&self.uuid)
    }

    /// Checks that these are parameters this module can produce and verify.
    pub fn validate(&self) -> Result<(), TrustError> {
        let bad = |reason: String| Err(TrustError::malformed("verity parameters", reason));
        if self.algorithm != "sha256" {
            return bad(format!(
                "algorithm {:?} is not supported; use sha256",
                self.algorithm
            ));
        }
        if self.data_block_size != VERITY_BLOCK_SIZE || self.hash_block_size != VERITY_BLOCK_SIZE {
            return bad(format!(
                "block sizes {}/{} are not supported; use 4096",
                self.data_block_size, self.hash_block_size
            ));
        }
        if self.data_blocks == 0 || self.data_blocks > u64::MAX / BLOCK_U64 / 2 {
            return bad(format!("{} data blocks is out of range", self.data_blocks));
        }
        if !self.hash_offset.is_multiple_of(BLOCK_U64) || self.hash_offset < self.data_size() {
            return bad(format!(
                "hash offset {} must be a multiple of 4096 at or after the data end {}",
                self.hash_offset,
                self.data_size()
            ));
        }
        self.salt_bytes()?;
        self.uuid_bytes()?;
        Ok(())
    }
}

/// Bytes the verity area takes after `data_size` bytes of data (rounded up to whole blocks):
/// the superblock block plus every hash level.
pub fn hash_tree_size(data_size: u64) -> u64 {
    let blocks = data_size.div_ceil(BLOCK_U64);
    (1 + level_sizes(blocks).iter().sum::<u64>()) * BLOCK_U64
}

/// Root hash of the first `data_size` bytes of `reader` (a multiple of 4096), streaming.
pub fn compute_root_hash(
    reader: impl Read,
    data_size: u64,
    salt: &[u8],
) -> Result<Sha256Hex, TrustError> {
    let blocks = check_data_size(data_size)?;
    check_salt(salt)?;
    let root = build_tree(blocks, salt, &mut HashOnly(reader))?;
    Ok(Sha256Hex::from_bytes(root))
}

/// Writes the superblock and hash tree for the first `data_size` bytes of `file` right after
/// them (`hash_offset = data_size`) and returns the parameters. The file grows as needed;
/// bytes past the tree are left alone. The caller syncs the file.
pub fn append_hash_tree(
    file: &mut File,
    data_size: u64,
    salt: &[u8],
    uuid: [u8; 16],
) -> Result<VerityInfo, TrustError> {
    use std::os::unix::fs::FileExt;

    let blocks = check_data_size(data_size)?;
    check_salt(salt)?;
    let mut sb_block = vec![0u8; BLOCK];
    sb_block[..SUPERBLOCK_LEN].copy_from_slice(&superblock(blocks, salt, uuid));
    file.write_all_at(&sb_block, data_size)
        .map_err(|e| TrustError::io("writing the verity superblock", e))?;
    let mut sink = AppendSink {
        file,
        pos: 0,
        layout: Layout::new(blocks, data_size),
    };
    let root = build_tree(blocks, salt, &mut sink)?;
    Ok(VerityInfo {
        root_hash: Sha256Hex::from_bytes(root),
        salt: hex::encode(salt),
        hash_offset: data_size,
        data_blocks: blocks,
        data_block_size: VERITY_BLOCK_SIZE,
        hash_block_size: VERITY_BLOCK_SIZE,
        algorithm: "sha256".into(),
        uuid: format_uuid(uuid),
    })
}

/// The parameters of an image whose hash tree was appended right after its data, as
/// [`append_hash_tree`] and `veritysetup format IMG IMG --hash-offset=DATA_SIZE` write it, with
/// nothing after the tree (a build's `rootfs.img`): finds the data size from the file's size,
/// reads the superblock there, and recomputes the root hash from the data (one read of it).
/// The tree itself is not checked; [`verify_device`] does that.
pub fn read_appended(file: &mut File) -> Result<VerityInfo, TrustError> {
    use std::os::unix::fs::FileExt;

    let size = file
        .metadata()
        .map_err(|e| TrustError::io("finding the size of the image", e))?
        .len();
    let not_appended = || {
        TrustError::malformed(
            "verity image",
            format!(
                "its {size} bytes are not 4096-byte data blocks followed by exactly their \
                 dm-verity superblock and hash tree; make it with `veritysetup format IMG IMG \
                 --hash-offset=DATA_SIZE` on a file of DATA_SIZE bytes"
            ),
        )
    };
    // The tree takes about 1/127 of the data: start just above and walk down.
    let mut data = size / BLOCK_U64 * BLOCK_U64;
    while data > 0 && data + hash_tree_size(data) > size {
        data -= BLOCK_U64;
    }
    if data == 0 || data + hash_tree_size(data) != size {
        return Err(not_appended());
    }
    let mut sb = [0u8; SUPERBLOCK_LEN];
    file.read_exact_at(&mut sb, data)
        .map_err(|e| TrustError::io("reading the verity superblock", e))?;
    let field = |at: usize, len: usize| &sb[at..at + len];
    let le64 = |at| u64::from_le_bytes(field(at, 8).try_into().unwrap_or([0; 8]));
    let salt_len = usize::from(u16::from_le_bytes([sb[80], sb[81]]));
    if field(0, 8) != b"verity\0\0"
        || le64(72) != data / BLOCK_U64
        || salt_len > MAX_SALT_LEN.min(SUPERBLOCK_LEN - 88)
    {
        return Err(not_appended());
    }
    let salt = field(88, salt_len).to_vec();
    let uuid: [u8; 16] = field(16, 16).try_into().map_err(|_| not_appended())?;
    if sb != superblock(data / BLOCK_U64, &salt, uuid) {
        return Err(TrustError::malformed(
            "verity superblock",
            "it is not one of format 1, sha256, 4096-byte blocks",
        ));
    }
    let mut reader = io::BufReader::with_capacity(CHUNK, &*file);
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|e| TrustError::io("seeking to the start of the image", e))?;
    let root_hash = compute_root_hash(reader, data, &salt)?;
    Ok(VerityInfo {
        root_hash,
        salt: hex::encode(&salt),
        hash_offset: data,
        data_blocks: data / BLOCK_U64,
        data_block_size: VERITY_BLOCK_SIZE,
        hash_block_size: VERITY_BLOCK_SIZE,
        algorithm: "sha256".into(),
        uuid: format_uuid(uuid),
    })
}

/// Checks a device or image file against `info`: the stored superblock must match the
/// parameters, every stored hash block must match the tree recomputed from the data, and the
/// recomputed root hash must be `info.root_hash`. Reads from the start to the end of the hash
/// tree once, in order (a [`VerityCheck`]).
pub fn verify_device<R: Read + Seek>(mut reader: R, info: &VerityInfo) -> Result<(), TrustError> {
    let mut check = VerityCheck::new(info)?;
    reader
        .seek(SeekFrom::Start(0))
        .map_err(|e| TrustError::io("seeking to the start of the verity data", e))?;
    let mut buf = vec![0u8; CHUNK];
    while check.position() < check.end() {
        let n = usize::try_from(check.end() - check.position())
            .unwrap_or(CHUNK)
            .min(CHUNK);
        let what = check.region();
        read_exact(&mut reader, &mut buf[..n], what)?;
        check.update(&buf[..n])?;
    }
    check.finish()
}

/// The dm-verity check of a device or image as a stream: feed it the bytes from offset 0 to
/// [`end`](Self::end) in order, in pieces of any size, then call [`finish`](Self::finish).
///
/// It hashes each data block (sha256(salt || block)) into the tree as `veritysetup` builds it,
/// keeping only the salted digest of each hash block it computes (32 bytes per 512 KiB of
/// data); compares the stored superblock with the parameters; and checks each stored hash
/// block, as it arrives after the data, against the digest of the block it computed. Since
/// the stored tree follows the data in the image, one sequential pass reads everything once,
/// with no seeks: the same pass can feed the whole-image sha256.
///
/// An all-zero data block's digest is computed once and reused: the same bytes as hashing it,
/// without hashing 4 KiB of zeros each time (file system images have runs of them).
#[derive(Debug)]
pub struct VerityCheck {
    salt: Vec<u8>,
    root_hash: [u8; 32],
    superblock: [u8; SUPERBLOCK_LEN],
    data_end: u64,
    hash_offset: u64,
    end: u64,
    layout: Layout,
    tree: Option<Tree>,
    /// Salted digest of each hash block computed from the data, per level.
    computed: Vec<Vec<[u8; 32]>>,
    root: Option<[u8; 32]>,
    /// The lowest-level stored hash block that differs: level, index, computed, stored.
    mismatch: Option<(usize, u64, [u8; 32], [u8; 32])>,
    zero_digest: [u8; 32],
    pos: u64,
    /// A block that arrived in pieces.
    partial: Vec<u8>,
}

impl VerityCheck {
    /// A check of the image `info` describes.
    pub fn new(info: &VerityInfo) -> Result<Self, TrustError> {
        info.validate()?;
        let salt = info.salt_bytes()?;
        let data_end = info.data_size();
        Ok(VerityCheck {
            superblock: superblock(info.data_blocks, &salt, info.uuid_bytes()?),
            root_hash: info.root_hash.to_bytes(),
            data_end,
            hash_offset: info.hash_offset,
            end: info.hash_offset + hash_tree_size(data_end),
            layout: Layout::new(info.data_blocks, info.hash_offset),
            tree: Some(Tree::new(info.data_blocks)),
            computed: level_sizes(info.data_blocks)
                .iter()
                .map(|n| Vec::with_capacity(usize::try_from(*n).unwrap_or(0)))
                .collect(),
            root: None,
            mismatch: None,
            zero_digest: salted_hash(&salt, &[0u8; BLOCK]),
            salt,
            pos: 0,
            partial: Vec::with_capacity(BLOCK),
        })
    }

    /// Bytes to feed: from 0 through the last block of the hash tree.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Bytes fed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// What the next byte belongs to, for messages.
    fn region(&self) -> &'static str {
        if self.pos < self.data_end {
            "verity data"
        } else if self.pos < self.hash_offset + BLOCK_U64 {
            "verity superblock"
        } else {
            "verity hash tree"
        }
    }

    /// Feeds the next bytes; bytes past [`end`](Self::end) are an error.
    pub fn update(&mut self, mut bytes: &[u8]) -> Result<(), TrustError> {
        if bytes.len() as u64 > self.end - self.pos {
            return Err(TrustError::Oversized {
                entry: "verity check input".into(),
                limit: self.end,
            });
        }
        if !self.partial.is_empty() {
            let take = (BLOCK - self.partial.len()).min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.partial.len() < BLOCK {
                return Ok(());
            }
            let block = std::mem::take(&mut self.partial);
            self.block(&block)?;
            self.partial = block;
            self.partial.clear();
        }
        let whole = bytes.len() / BLOCK * BLOCK;
        for block in bytes[..whole].chunks_exact(BLOCK) {
            self.block(block)?;
        }
        self.partial.extend_from_slice(&bytes[whole..]);
        Ok(())
    }

    /// Where the data blocks end and the verity area starts; with no gap between them, the
    /// check covers every byte from 0 to [`end`](Self::end): each data block through the
    /// tree, the superblock with its padding, each hash block.
    pub fn covers_every_byte(&self) -> bool {
        self.hash_offset == self.data_end
    }

    /// Where the data blocks end.
    pub fn data_end(&self) -> u64 {
        self.data_end
    }

    /// What hashes the data blocks for [`update_hashed`](Self::update_hashed), on other
    /// threads.
    pub fn block_hasher(&self) -> BlockHasher {
        BlockHasher {
            salt: self.salt.clone(),
            zero_digest: self.zero_digest,
        }
    }

    /// [`update`](Self::update) with the data blocks among `bytes` already hashed by this
    /// check's [`block_hasher`](Self::block_hasher), in order: so that the hashing, most of
    /// the check's work, can run on several cores. `bytes` must start on a block boundary
    /// and `digests` hold one digest per data block in it; blocks past the data end are
    /// checked here as `update` does.
    pub fn update_hashed(&mut self, bytes: &[u8], digests: &[[u8; 32]]) -> Result<(), TrustError> {
        let data_blocks = usize::try_from(
            self.data_end
                .saturating_sub(self.pos)
                .min(bytes.len() as u64)
                .div_ceil(BLOCK_U64),
        )
        .unwrap_or(usize::MAX);
        if !self.partial.is_empty()
            || digests.len() != data_blocks
            || !bytes.len().is_multiple_of(BLOCK)
        {
            return Err(TrustError::malformed(
                "verity check input",
                "pre-hashed bytes must be whole blocks with one digest per data block",
            ));
        }
        if bytes.len() as u64 > self.end - self.pos {
            return Err(TrustError::Oversized {
                entry: "verity check input".into(),
                limit: self.end,
            });
        }
        let mut digests = digests.iter().copied();
        for block in bytes.chunks_exact(BLOCK) {
            let digest = if self.pos < self.data_end {
                digests.next()
            } else {
                None
            };
            self.block_with(block, digest)?;
        }
        Ok(())
    }

    /// One block at `self.pos`.
    fn block(&mut self, block: &[u8]) -> Result<(), TrustError> {
        self.block_with(block, None)
    }

    /// One block at `self.pos`, with its salted digest if a data block's was computed already.
    fn block_with(&mut self, block: &[u8], digest: Option<[u8; 32]>) -> Result<(), TrustError> {
        let at = self.pos;
        self.pos += BLOCK_U64;
        if at < self.data_end {
            let digest = match digest {
                Some(d) => d,
                None if block == ZERO_BLOCK.as_slice() => self.zero_digest,
                None => salted_hash(&self.salt, block),
            };
            let tree = self.tree.as_mut().ok_or_else(no_tree)?;
            let computed = &mut self.computed;
            tree.push(digest, &self.salt, &mut |level, _, _, d: &[u8; 32]| {
                computed[level].push(*d);
                Ok(())
            })?;
            if self.pos == self.data_end {
                let tree = self.tree.take().ok_or_else(no_tree)?;
                let computed = &mut self.computed;
                self.root = Some(tree.finish(&self.salt, &mut |level, _, _, d| {
                    computed[level].push(*d);
                    Ok(())
                })?);
            }
        } else if at == self.hash_offset {
            if block[..SUPERBLOCK_LEN] != self.superblock {
                return Err(TrustError::malformed(
                    "verity superblock",
                    "it does not match the manifest's verity parameters; the image was not \
                     built with this manifest or its hash area is damaged",
                ));
            }
            // veritysetup and the build write zeros after it: nothing else may hide there.
            if block[SUPERBLOCK_LEN..].iter().any(|b| *b != 0) {
                return Err(TrustError::malformed(
                    "verity superblock",
                    "the rest of its block is not zeros, as veritysetup and the build write \
                     it; the hash area is damaged",
                ));
            }
        } else if at > self.hash_offset {
            let (level, index) = self.layout.block_at(at).ok_or_else(no_tree)?;
            let expected = self
                .computed
                .get(level)
                .and_then(|l| l.get(usize::try_from(index).ok()?))
                .ok_or_else(no_tree)?;
            let actual = salted_hash(&self.salt, block);
            // The top level is stored first, and a changed data block changes its hash block
            // at every level: the lowest level that differs says where, so report that one.
            if actual != *expected && self.mismatch.as_ref().is_none_or(|m| level < m.0) {
                self.mismatch = Some((level, index, *expected, actual));
            }
        }
        Ok(())
    }

    /// After the last byte: the recomputed root hash must be the expected one.
    pub fn finish(self) -> Result<(), TrustError> {
        if self.pos != self.end || !self.partial.is_empty() {
            return Err(TrustError::Truncated {
                entry: format!(
                    "{} (the check got {} of {} bytes)",
                    self.region(),
                    self.pos + self.partial.len() as u64,
                    self.end
                ),
            });
        }
        if let Some((level, index, expected, actual)) = self.mismatch {
            return Err(TrustError::HashMismatch {
                artifact: format!(
                    "verity hash tree level {level} block {index} (salted sha256 of the block as \
                     stored, against the block recomputed from the data)"
                ),
                expected: hex::encode(expected),
                actual: hex::encode(actual),
            });
        }
        let root = self.root.ok_or_else(no_tree)?;
        if root != self.root_hash {
            return Err(TrustError::HashMismatch {
                artifact: "verity root hash".into(),
                expected: hex::encode(self.root_hash),
                actual: hex::encode(root),
            });
        }
        Ok(())
    }
}

/// Hashes data blocks as a [`VerityCheck`] does (sha256 of the salt and the block), for
/// [`VerityCheck::update_hashed`] on other threads.
#[derive(Debug, Clone)]
pub struct BlockHasher {
    salt: Vec<u8>,
    zero_digest: [u8; 32],
}

impl BlockHasher {
    /// The digests of the first `blocks` whole blocks of `bytes`, into `out` (cleared first).
    pub fn digests(&self, bytes: &[u8], blocks: usize, out: &mut Vec<[u8; 32]>) {
        out.clear();
        out.extend(bytes.chunks_exact(BLOCK).take(blocks).map(|block| {
            if block == ZERO_BLOCK.as_slice() {
                self.zero_digest
            } else {
                salted_hash(&self.salt, block)
            }
        }));
    }
}

/// Builds the verity area of an image (the superblock block and every hash level, as they
/// follow the data at `hash_offset`) in memory from the image's bytes fed in order, for a
/// delta install that rebuilds the tree instead of receiving it. Memory: the area itself,
/// about 1/127 of the data.
#[derive(Debug)]
pub struct VerityArea {
    salt: Vec<u8>,
    root_hash: [u8; 32],
    data_end: u64,
    hash_offset: u64,
    layout: Layout,
    tree: Tree,
    area: Vec<u8>,
    pos: u64,
    partial: Vec<u8>,
}

impl VerityArea {
    /// A builder for the image `info` describes.
    pub fn new(info: &VerityInfo) -> Result<Self, TrustError> {
        info.validate()?;
        let salt = info.salt_bytes()?;
        let data_end = info.data_size();
        let len = usize::try_from(hash_tree_size(data_end))
            .map_err(|_| TrustError::malformed("verity parameters", "the tree is too large"))?;
        let mut area = vec![0u8; len];
        area[..SUPERBLOCK_LEN].copy_from_slice(&superblock(
            info.data_blocks,
            &salt,
            info.uuid_bytes()?,
        ));
        Ok(VerityArea {
            salt,
            root_hash: info.root_hash.to_bytes(),
            data_end,
            hash_offset: info.hash_offset,
            layout: Layout::new(info.data_blocks, info.hash_offset),
            tree: Tree::new(info.data_blocks),
            area,
            pos: 0,
            partial: Vec::with_capacity(BLOCK),
        })
    }

    /// Where the area starts in the image: the bytes before it are the ones to feed.
    pub fn hash_offset(&self) -> u64 {
        self.hash_offset
    }

    /// Feeds the next image bytes (bytes past the data end and before the area are ignored;
    /// feeding past `hash_offset` is a misuse).
    pub fn update(&mut self, mut bytes: &[u8]) -> Result<(), TrustError> {
        if self.pos + bytes.len() as u64 > self.hash_offset {
            return Err(TrustError::malformed(
                "verity area",
                "bytes past the hash offset were fed as data",
            ));
        }
        while !bytes.is_empty() && self.pos < self.data_end {
            let take = bytes
                .len()
                .min(usize::try_from(self.data_end - self.pos).unwrap_or(usize::MAX));
            let (data, _) = bytes.split_at(take);
            let mut rest = data;
            if !self.partial.is_empty() || rest.len() < BLOCK {
                let n = rest.len().min(BLOCK - self.partial.len());
                self.partial.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
                if self.partial.len() == BLOCK {
                    let block = std::mem::take(&mut self.partial);
                    self.push(&block)?;
                    self.partial = block;
                    self.partial.clear();
                }
            }
            while rest.len() >= BLOCK {
                let (block, more) = rest.split_at(BLOCK);
                self.push(block)?;
                rest = more;
            }
            if !rest.is_empty() {
                self.partial.extend_from_slice(rest);
            }
            self.pos += take as u64;
            bytes = &bytes[take..];
        }
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn push(&mut self, block: &[u8]) -> Result<(), TrustError> {
        let (area, layout, base) = (&mut self.area, &self.layout, self.hash_offset);
        let digest = salted_hash(&self.salt, block);
        self.tree.push(digest, &self.salt, &mut |l, i, b, _| {
            let at = (layout.block_offset(l, i) - base) as usize;
            area[at..at + BLOCK].copy_from_slice(b);
            Ok(())
        })
    }

    /// The area, once every byte before `hash_offset` was fed; refused unless the data hashes
    /// to the root hash the parameters name.
    pub fn finish(self) -> Result<Vec<u8>, TrustError> {
        if self.pos != self.hash_offset {
            return Err(TrustError::malformed(
                "verity area",
                format!(
                    "{} of the {} bytes before the tree were fed",
                    self.pos, self.hash_offset
                ),
            ));
        }
        let VerityArea {
            salt,
            root_hash,
            hash_offset,
            layout,
            tree,
            mut area,
            ..
        } = self;
        let root = tree.finish(&salt, &mut |l, i, b, _| {
            let at = (layout.block_offset(l, i) - hash_offset) as usize;
            area[at..at + BLOCK].copy_from_slice(b);
            Ok(())
        })?;
        if root != root_hash {
            return Err(TrustError::HashMismatch {
                artifact: "the rebuilt image's verity root".into(),
                expected: hex::encode(root_hash),
                actual: hex::encode(root),
            });
        }
        Ok(area)
    }
}

/// 4 KiB of zeros.
static ZERO_BLOCK: [u8; BLOCK] = [0u8; BLOCK];

fn no_tree() -> TrustError {
    TrustError::malformed("verity check", "the hash tree was used out of order")
}

/// The 512-byte superblock (cryptsetup `struct verity_sb`).
fn superblock(data_blocks: u64, salt: &[u8], uuid: [u8; 16]) -> [u8; SUPERBLOCK_LEN] {
    let mut sb = [0u8; SUPERBLOCK_LEN];
    sb[0..8].copy_from_slice(b"verity\0\0");
    sb[8..12].copy_from_slice(&1u32.to_le_bytes()); // superblock version
    sb[12..16].copy_from_slice(&1u32.to_le_bytes()); // hash type: normal (not Chrome OS)
    sb[16..32].copy_from_slice(&uuid);
    sb[32..38].copy_from_slice(b"sha256"); // algorithm[32], zero padded
    sb[64..68].copy_from_slice(&VERITY_BLOCK_SIZE.to_le_bytes());
    sb[68..72].copy_from_slice(&VERITY_BLOCK_SIZE.to_le_bytes());
    sb[72..80].copy_from_slice(&data_blocks.to_le_bytes());
    // Callers checked salt.len() <= 256.
    sb[80..82].copy_from_slice(&(salt.len() as u16).to_le_bytes());
    // 82..88 padding, then salt[256] at 88, then 168 bytes of padding.
    sb[88..88 + salt.len()].copy_from_slice(salt);
    sb
}

/// Number of hash blocks per level, level 0 (hashes of data blocks) first; empty for one block.
fn level_sizes(data_blocks: u64) -> Vec<u64> {
    // cryptsetup hash_levels(): levels grow while (blocks - 1) >> (bits * levels) != 0.
    let mut levels = 0u32;
    while HASH_PER_BLOCK_BITS * levels < 64
        && data_blocks.saturating_sub(1) >> (HASH_PER_BLOCK_BITS * levels) != 0
    {
        levels += 1;
    }
    (0..levels)
        .map(|i| {
            let shift = HASH_PER_BLOCK_BITS * (i + 1);
            if shift >= 64 {
                1
            } else {
                data_blocks.div_ceil(1u64 << shift)
            }
        })
        .collect()
}

/// Where each level starts on disk.
#[derive(Debug)]
struct Layout {
    /// Byte offset of level i's first block.
    level_start: Vec<u64>,
}

impl Layout {
    fn new(data_blocks: u64, hash_offset: u64) -> Self {
        let sizes = level_sizes(data_blocks);
        let mut level_start = vec![0u64; sizes.len()];
        // Top level first, right after the superblock block.
        let mut pos = hash_offset + BLOCK_U64;
        for (i, size) in sizes.iter().enumerate().rev() {
            level_start[i] = pos;
            pos += size * BLOCK_U64;
        }
        Layout { level_start }
    }

    fn block_offset(&self, level: usize, index: u64) -> u64 {
        self.level_start[level] + index * BLOCK_U64
    }

    /// The (level, index) of the hash block at byte offset `at`; `None` outside the tree.
    fn block_at(&self, at: u64) -> Option<(usize, u64)> {
        // Levels are stored top first, so the level at `at` is the lowest-numbered one that
        // starts at or before it.
        let level = (0..self.level_start.len()).find(|l| self.level_start[*l] <= at)?;
        let index = (at - self.level_start[level]) / BLOCK_U64;
        Some((level, index))
    }
}

/// What the tree builder reads data from and hands finished hash blocks to.
trait TreeSink {
    /// Fills `buf` with the next data bytes.
    fn read_data(&mut self, buf: &mut [u8]) -> Result<(), TrustError>;
    /// Takes hash block `index` of `level`, complete and zero padded.
    fn hash_block(&mut self, level: usize, index: u64, block: &[u8]) -> Result<(), TrustError>;
}

struct HashOnly<R>(R);

impl<R: Read> TreeSink for HashOnly<R> {
    fn read_data(&mut self, buf: &mut [u8]) -> Result<(), TrustError> {
        read_exact(&mut self.0, buf, "verity data")
    }

    fn hash_block(&mut self, _: usize, _: u64, _: &[u8]) -> Result<(), TrustError> {
        Ok(())
    }
}

struct AppendSink<'f> {
    file: &'f File,
    pos: u64,
    layout: Layout,
}

impl TreeSink for AppendSink<'_> {
    fn read_data(&mut self, buf: &mut [u8]) -> Result<(), TrustError> {
        use std::os::unix::fs::FileExt;
        self.file
            .read_exact_at(buf, self.pos)
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => TrustError::Truncated {
                    entry: "verity data".into(),
                },
                _ => TrustError::io("reading verity data", e),
            })?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn hash_block(&mut self, level: usize, index: u64, block: &[u8]) -> Result<(), TrustError> {
        use std::os::unix::fs::FileExt;
        self.file
            .write_all_at(block, self.layout.block_offset(level, index))
            .map_err(|e| TrustError::io("writing the verity hash tree", e))
    }
}

/// One level's block being filled.
#[derive(Debug)]
struct Level {
    block: Vec<u8>,
    fill: usize,
    index: u64,
}

/// Takes each finished hash block: its level, index, bytes (zero padded) and salted digest.
type OnBlock<'a> = dyn FnMut(usize, u64, &[u8], &[u8; 32]) -> Result<(), TrustError> + 'a;

/// A hash tree being built from the digests of the data blocks, in order.
#[derive(Debug)]
struct Tree {
    levels: Vec<Level>,
    root: Option<[u8; 32]>,
}

impl Tree {
    fn new(data_blocks: u64) -> Self {
        Tree {
            levels: level_sizes(data_blocks)
                .iter()
                .map(|_| Level {
                    block: vec![0u8; BLOCK],
                    fill: 0,
                    index: 0,
                })
                .collect(),
            root: None,
        }
    }

    /// Adds the digest of the next data block, cascading full blocks upwards.
    fn push(
        &mut self,
        digest: [u8; 32],
        salt: &[u8],
        on_block: &mut OnBlock<'_>,
    ) -> Result<(), TrustError> {
        if self.levels.is_empty() {
            self.root = Some(digest);
            return Ok(());
        }
        self.push_at(0, digest, salt, on_block)
    }

    fn push_at(
        &mut self,
        mut level: usize,
        mut digest: [u8; 32],
        salt: &[u8],
        on_block: &mut OnBlock<'_>,
    ) -> Result<(), TrustError> {
        loop {
            let l = &mut self.levels[level];
            l.block[l.fill..l.fill + DIGEST_LEN].copy_from_slice(&digest);
            l.fill += DIGEST_LEN;
            if l.fill < BLOCK {
                return Ok(());
            }
            digest = emit(l, level, salt, on_block)?;
            if level + 1 == self.levels.len() {
                self.root = Some(digest);
                return Ok(());
            }
            level += 1;
        }
    }

    /// Flushes partial blocks bottom up (each flush may complete the level above) and returns
    /// the root hash.
    fn finish(mut self, salt: &[u8], on_block: &mut OnBlock<'_>) -> Result<[u8; 32], TrustError> {
        for level in 0..self.levels.len() {
            if self.levels[level].fill > 0 {
                let digest = emit(&mut self.levels[level], level, salt, on_block)?;
                if level + 1 < self.levels.len() {
                    self.push_at(level + 1, digest, salt, on_block)?;
                } else {
                    self.root = Some(digest);
                }
            }
        }
        self.root
            .ok_or_else(|| TrustError::malformed("verity tree", "no root was produced"))
    }
}

/// Reads `data_blocks` blocks through `sink`, hands it every hash block, returns the root hash.
fn build_tree(
    data_blocks: u64,
    salt: &[u8],
    sink: &mut impl TreeSink,
) -> Result<[u8; 32], TrustError> {
    let mut tree = Tree::new(data_blocks);
    let mut buf = vec![0u8; CHUNK];
    let mut left = data_blocks;
    while left > 0 {
        let n = usize::try_from(left.min((CHUNK / BLOCK) as u64)).unwrap_or(1);
        let chunk = &mut buf[..n * BLOCK];
        sink.read_data(chunk)?;
        for block in chunk.chunks_exact(BLOCK) {
            tree.push(salted_hash(salt, block), salt, &mut |l, i, b, _| {
                sink.hash_block(l, i, b)
            })?;
        }
        left -= n as u64;
    }
    tree.finish(salt, &mut |l, i, b, _| sink.hash_block(l, i, b))
}

/// Hands the (zero padded) block of `l` on, resets it, returns its salted hash.
fn emit(
    l: &mut Level,
    level: usize,
    salt: &[u8],
    on_block: &mut OnBlock<'_>,
) -> Result<[u8; 32], TrustError> {
    let digest = salted_hash(salt, &l.block);
    on_block(level, l.index, &l.block, &digest)?;
    l.block.fill(0);
    l.fill = 0;
    l.index += 1;
    Ok(digest)
}

fn salted_hash(salt: &[u8], block: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

fn read_exact(reader: &mut impl Read, buf: &mut [u8], what: &str) -> Result<(), TrustError> {
    reader.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => TrustError::Truncated { entry: what.into() },
        _ => TrustError::io(format!("reading {what}"), e),
    })
}

fn check_data_size(data_size: u64) -> Result<u64, TrustError> {
    if data_size == 0 || !data_size.is_multiple_of(BLOCK_U64) {
        return Err(TrustError::malformed(
            "verity data",
            format!("size {data_size} is not a positive multiple of 4096; pad the image"),
        ));
    }
    Ok(data_size / BLOCK_U64)
}

fn check_salt(salt: &[u8]) -> Result<(), TrustError> {
    if salt.len() > MAX_SALT_LEN {
        return Err(TrustError::malformed(
            "verity salt",
            format!("{} bytes is more than the 256 dm-verity allows", salt.len()),
        ));
    }
    Ok(())
}

/// Formats 16 bytes as a lowercase 8-4-4-4-12 UUID.
pub fn format_uuid(uuid: [u8; 16]) -> String {
    let h = hex::encode(uuid);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Parses an 8-4-4-4-12 UUID (either case).
pub fn parse_uuid(text: &str) -> Result<[u8; 16], TrustError> {
    let groups: Vec<&str> = text.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let mut out = [0u8; 16];
    if lens != [8, 4, 4, 4, 12] || hex::decode_to_slice(groups.concat(), &mut out).is_err() {
        return Err(TrustError::malformed(
            format!("uuid {text:?}"),
            "expected the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_area_built_in_memory_is_the_appended_one_whatever_the_feed_sizes() {
        for blocks in [1u64, 2, 129, 300] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("img");
            let data: Vec<u8> = (0..blocks as usize * BLOCK)
                .map(|i| (i / 7 % 253) as u8)
                .collect();
            std::fs::write(&path, &data).unwrap();
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let info = append_hash_tree(&mut f, data.len() as u64, b"salt", [7; 16]).unwrap();
            let image = std::fs::read(&path).unwrap();
            for piece in [1usize, 1000, BLOCK, 3 * BLOCK + 5] {
                let mut area = VerityArea::new(&info).unwrap();
                for chunk in data.chunks(piece) {
                    area.update(chunk).unwrap();
                }
                assert_eq!(
                    area.finish().unwrap(),
                    &image[data.len()..],
                    "{blocks} {piece}"
                );
            }
            let mut wrong = info.clone();
            wrong.root_hash = Sha256Hex::digest(b"other");
            let mut area = VerityArea::new(&wrong).unwrap();
            area.update(&data).unwrap();
            assert!(area.finish().is_err());
            let mut short = VerityArea::new(&info).unwrap();
            short.update(&data[..BLOCK - 1]).unwrap();
            assert!(short.finish().unwrap_err().to_string().contains("were fed"));
        }
    }
    use std::io::{Cursor, Write};

    const UUID: [u8; 16] = [0x11; 16];

    /// An image of `blocks` blocks, block i filled with the byte i (the fixture's pattern).
    fn pattern_image(blocks: u64) -> Vec<u8> {
        (0..blocks).flat_map(|i| vec![i as u8; BLOCK]).collect()
    }

    fn image_file(data: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(data).unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .open(tmp.path())
            .unwrap();
        (tmp, file)
    }

    #[test]
    fn level_geometry_matches_cryptsetup() {
        assert_eq!(level_sizes(1), Vec::<u64>::new());
        assert_eq!(level_sizes(2), vec![1]);
        assert_eq!(level_sizes(128), vec![1]);
        assert_eq!(level_sizes(129), vec![2, 1]);
        assert_eq!(level_sizes(16384), vec![128, 1]);
        assert_eq!(level_sizes(16385), vec![129, 2, 1]);
        assert_eq!(hash_tree_size(4096), 4096);
        assert_eq!(hash_tree_size(129 * 4096), 4 * 4096);
        // Top level first: for 129 blocks, level 1 (1 block) then level 0 (2 blocks).
        let layout = Layout::new(129, 1 << 20);
        assert_eq!(
            layout.level_start,
            vec![(1 << 20) + 2 * 4096, (1 << 20) + 4096]
        );
    }

    #[test]
    fn one_block_root_is_hash_of_the_block() {
        let data = pattern_image(1);
        let root = compute_root_hash(&data[..], 4096, b"salt").unwrap();
        assert_eq!(root.to_bytes(), salted_hash(b"salt", &data));
    }

    #[test]
    fn two_block_root_by_hand() {
        let data = pattern_image(2);
        let mut level0 = vec![0u8; BLOCK];
        level0[..32].copy_from_slice(&salted_hash(b"s", &data[..BLOCK]));
        level0[32..64].copy_from_slice(&salted_hash(b"s", &data[BLOCK..]));
        let root = compute_root_hash(&data[..], 8192, b"s").unwrap();
        assert_eq!(root.to_bytes(), salted_hash(b"s", &level0));
    }

    #[test]
    fn superblock_layout() {
        let sb = superblock(0x0102_0304, &[0xaa, 0xbb], UUID);
        assert_eq!(&sb[..8], b"verity\0\0");
        assert_eq!(&sb[8..16], &[1, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&sb[16..32], &UUID);
        assert_eq!(&sb[32..39], b"sha256\0");
        assert_eq!(&sb[64..72], &[0, 0x10, 0, 0, 0, 0x10, 0, 0]);
        assert_eq!(&sb[72..80], &[4, 3, 2, 1, 0, 0, 0, 0]);
        assert_eq!(&sb[80..82], &[2, 0]);
        assert_eq!(&sb[88..90], &[0xaa, 0xbb]);
        assert!(sb[90..].iter().all(|b| *b == 0));
    }

    #[test]
    fn fixture_matches_veritysetup_recording() {
        #[derive(Deserialize)]
        struct Expected {
            data_blocks: u64,
            salt: String,
            uuid: String,
            root_hash: Sha256Hex,
            hash_area_size: u64,
            hash_area_sha256: Sha256Hex,
        }
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/verity-130-blocks/expected.json"
        );
        let expected: Expected = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let data = pattern_image(expected.data_blocks);
        let data_size = data.len() as u64;
        let (tmp, mut file) = image_file(&data);
        let salt = hex::decode(&expected.salt).unwrap();
        let info = append_hash_tree(
            &mut file,
            data_size,
            &salt,
            parse_uuid(&expected.uuid).unwrap(),
        )
        .unwrap();
        assert_eq!(info.root_hash, expected.root_hash);
        assert_eq!(info.uuid, expected.uuid);
        let all = std::fs::read(tmp.path()).unwrap();
        assert_eq!(&all[..data.len()], &data[..]);
        let area = &all[data.len()..];
        assert_eq!(area.len() as u64, expected.hash_area_size);
        assert_eq!(hash_tree_size(data_size), expected.hash_area_size);
        assert_eq!(Sha256Hex::digest(area), expected.hash_area_sha256);
        assert_eq!(
            compute_root_hash(&data[..], data_size, &salt).unwrap(),
            expected.root_hash
        );
        verify_device(Cursor::new(all), &info).unwrap();
    }

    fn appended(blocks: u64) -> (Vec<u8>, VerityInfo) {
        let data = pattern_image(blocks);
        let (tmp, mut file) = image_file(&data);
        let info = append_hash_tree(&mut file, data.len() as u64, b"snakeoil-salt", UUID).unwrap();
        (std::fs::read(tmp.path()).unwrap(), info)
    }

    #[test]
    fn verify_detects_flipped_data_byte() {
        let (mut img, info) = appended(200);
        img[150 * BLOCK + 7] ^= 1;
        let err = verify_device(Cursor::new(img), &info).unwrap_err();
        assert!(matches!(err, TrustError::HashMismatch { .. }), "{err}");
    }

    #[test]
    fn verify_detects_flipped_tree_byte_in_every_level() {
        let (img, info) = appended(200);
        // The blocks after the superblock: level 1 (top), level 0 block 0, level 0 block 1.
        for block in 1..4 {
            let mut bad = img.clone();
            bad[200 * BLOCK + block * BLOCK + 5] ^= 0x80;
            let err = verify_device(Cursor::new(bad), &info).unwrap_err();
            assert!(
                err.to_string().contains("verity hash tree level"),
                "{block}: {err}"
            );
        }
    }

    #[test]
    fn verify_checks_superblock_and_parameters() {
        let (img, info) = appended(3);
        let mut bad = img.clone();
        bad[3 * BLOCK + 16] ^= 1; // uuid byte
        let err = verify_device(Cursor::new(bad), &info).unwrap_err();
        assert!(err.to_string().contains("verity superblock"), "{err}");
        let mut other = info.clone();
        other.root_hash = Sha256Hex::digest(b"other");
        let err = verify_device(Cursor::new(img.clone()), &other).unwrap_err();
        assert!(err.to_string().contains("verity root hash"), "{err}");
        let mut other = info.clone();
        other.algorithm = "sha1".into();
        assert!(verify_device(Cursor::new(img.clone()), &other).is_err());
        let err = verify_device(Cursor::new(&img[..img.len() - 1]), &info).unwrap_err();
        assert!(matches!(err, TrustError::Truncated { .. }), "{err}");
    }

    /// Fed in pieces of odd sizes, with zero blocks among the data (the reused digest), the
    /// streaming check accepts the image and finds a flip in the data, in every tree level
    /// and in the superblock; too little or too much input is refused.
    #[test]
    fn streaming_check_in_odd_pieces() {
        let data: Vec<u8> = (0..300u64)
            .flat_map(|i| vec![if i % 3 == 0 { 0 } else { i as u8 }; BLOCK])
            .collect();
        let (tmp, mut file) = image_file(&data);
        let info = append_hash_tree(&mut file, data.len() as u64, b"snakeoil", UUID).unwrap();
        let img = std::fs::read(tmp.path()).unwrap();
        let run = |img: &[u8]| -> Result<(), TrustError> {
            let mut c = VerityCheck::new(&info)?;
            assert_eq!(c.end(), img.len() as u64);
            for piece in img.chunks(3001) {
                c.update(piece)?;
            }
            c.finish()
        };
        run(&img).unwrap();
        assert_eq!(
            compute_root_hash(&data[..], data.len() as u64, b"snakeoil").unwrap(),
            info.root_hash
        );
        // A zero data block (132) and a non-zero one (131), both under level 0 block 1.
        for at in [132 * BLOCK + 9, 131 * BLOCK] {
            let mut bad = img.clone();
            bad[at] ^= 1;
            let err = run(&bad).unwrap_err();
            assert!(err.to_string().contains("level 0 block 1"), "{err}");
        }
        // Tree: level 1 (top, one block), then level 0 blocks 0..3.
        for (block, level) in [(1usize, "level 1 block 0"), (3, "level 0 block 1")] {
            let mut bad = img.clone();
            bad[300 * BLOCK + block * BLOCK + 100] ^= 0x40;
            let err = run(&bad).unwrap_err();
            assert!(err.to_string().contains(level), "{err}");
        }
        let mut bad = img.clone();
        bad[300 * BLOCK + 72] ^= 1; // data_blocks in the superblock
        assert!(run(&bad).unwrap_err().to_string().contains("superblock"));
        let mut short = VerityCheck::new(&info).unwrap();
        short.update(&img[..img.len() - 1]).unwrap();
        assert!(matches!(
            short.finish().unwrap_err(),
            TrustError::Truncated { .. }
        ));
        let mut long = VerityCheck::new(&info).unwrap();
        long.update(&img).unwrap();
        assert!(long.update(&[0]).is_err());
    }

    /// Data blocks hashed elsewhere (a [`BlockHasher`], as the updater's read-back does on
    /// two threads) give the same verdicts as hashing them in the check: the image passes,
    /// a flip in the data, the tree or the superblock's padding fails, and digests that do
    /// not fit the bytes are refused.
    #[test]
    fn pre_hashed_data_blocks_give_the_same_verdicts() {
        let data: Vec<u8> = (0..300u64)
            .flat_map(|i| vec![if i % 5 == 0 { 0 } else { i as u8 ^ 0x5a }; BLOCK])
            .collect();
        let (tmp, mut file) = image_file(&data);
        let info = append_hash_tree(&mut file, data.len() as u64, b"pepper", UUID).unwrap();
        let img = std::fs::read(tmp.path()).unwrap();
        let run = |img: &[u8]| -> Result<(), TrustError> {
            let mut c = VerityCheck::new(&info)?;
            assert!(c.covers_every_byte());
            let hasher = c.block_hasher();
            let mut digests = Vec::new();
            // Pieces of 7 blocks: one straddles the data's end and the superblock.
            for (i, piece) in img.chunks(7 * BLOCK).enumerate() {
                let at = (i * 7 * BLOCK) as u64;
                let blocks = c.data_end().saturating_sub(at).div_ceil(BLOCK_U64);
                hasher.digests(piece, blocks as usize, &mut digests);
                c.update_hashed(piece, &digests)?;
            }
            c.finish()
        };
        run(&img).unwrap();
        for (at, what) in [
            (17 * BLOCK + 3, "level 0 block 0"),
            (300 * BLOCK + 600, "superblock"),
            (300 * BLOCK + 3 * BLOCK + 8, "level 0 block 1"),
        ] {
            let mut bad = img.clone();
            bad[at] ^= 1;
            let err = run(&bad).unwrap_err();
            assert!(err.to_string().contains(what), "{at}: {err}");
        }
        // The same padding flip through `update`.
        let mut bad = img.clone();
        bad[300 * BLOCK + 4000] = 1;
        let err = verify_device(Cursor::new(bad), &info).unwrap_err();
        assert!(err.to_string().contains("not zeros"), "{err}");
        // Misuse: a digest too few, a piece that is not whole blocks.
        let mut c = VerityCheck::new(&info).unwrap();
        let mut d = Vec::new();
        c.block_hasher().digests(&img[..2 * BLOCK], 1, &mut d);
        assert!(c.update_hashed(&img[..2 * BLOCK], &d).is_err());
        let mut c = VerityCheck::new(&info).unwrap();
        c.block_hasher().digests(&img[..BLOCK], 1, &mut d);
        assert!(c.update_hashed(&img[..BLOCK + 1], &d).is_err());
    }

    #[test]
    fn appended_parameters_are_read_back() {
        for blocks in [1u64, 129, 300] {
            let data = pattern_image(blocks);
            let (tmp, mut file) = image_file(&data);
            let info = append_hash_tree(&mut file, data.len() as u64, b"snakeoil", UUID).unwrap();
            let mut f = File::open(tmp.path()).unwrap();
            assert_eq!(read_appended(&mut f).unwrap(), info, "{blocks} blocks");
        }
        // Data alone, or a tree with a byte after it: not an appended image.
        let (_tmp, mut plain) = image_file(&pattern_image(40));
        assert!(read_appended(&mut plain).is_err());
        let (tmp, mut file) = image_file(&pattern_image(40));
        append_hash_tree(&mut file, 40 * 4096, b"", UUID).unwrap();
        let mut f = File::options().append(true).open(tmp.path()).unwrap();
        f.write_all(&[0]).unwrap();
        let err = read_appended(&mut File::open(tmp.path()).unwrap()).unwrap_err();
        assert!(err.to_string().contains("veritysetup format"), "{err}");
    }

    #[test]
    fn truncated_data_is_reported() {
        let data = pattern_image(2);
        let err = compute_root_hash(&data[..4096], 8192, b"").unwrap_err();
        assert!(matches!(err, TrustError::Truncated { .. }), "{err}");
    }

    #[test]
    fn bad_sizes_and_salts_are_refused() {
        assert!(compute_root_hash(&[][..], 0, b"").is_err());
        assert!(compute_root_hash(&[0u8; 5000][..], 5000, b"").is_err());
        assert!(compute_root_hash(&[0u8; 4096][..], 4096, &[0u8; 257]).is_err());
        compute_root_hash(&[0u8; 4096][..], 4096, &[0u8; 256]).unwrap();
    }

    #[test]
    fn uuid_round_trip() {
        let text = "0f8e2b4a-3c1d-4e5f-8a9b-0c1d2e3f4a5b";
        assert_eq!(format_uuid(parse_uuid(text).unwrap()), text);
        assert!(parse_uuid("0f8e2b4a3c1d4e5f8a9b0c1d2e3f4a5b").is_err());
        assert!(parse_uuid("0f8e2b4a-3c1d-4e5f-8a9b-0c1d2e3f4a5g").is_err());
    }

    #[test]
    fn info_round_trips_and_refuses_unknown_fields() {
        let (_, info) = appended(1);
        info.validate().unwrap();
        let mut v = serde_json::to_value(&info).unwrap();
        assert_eq!(
            serde_json::from_value::<VerityInfo>(v.clone()).unwrap(),
            info
        );
        v["extra"] = serde_json::json!(0);
        assert!(serde_json::from_value::<VerityInfo>(v).is_err());
        let mut upper = info;
        upper.salt = upper.salt.to_uppercase();
        assert!(upper.validate().is_err());
    }
}
