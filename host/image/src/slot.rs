//! Slot images: the rootfs commit checked out and packed as erofs (read-only, compressed as
//! the recipe says (`[outputs] rootfs_compression`), ownership, modes and xattrs kept, fixed UUID and timestamps), with a dm-verity hash tree
//! appended whose salt derives from the recipe. Cached by commit, so a build whose rootfs did
//! not change reuses its slot image.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aperture_sys::Cmd;
use aperture_trust::verity::{self, VerityInfo};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::progress::Step;
use crate::recipe::RootfsCompression;
use crate::store::Store;

/// Bump to invalidate cached slot images when the way they are made changes (2: file tails
/// out of the metadata, `-E noinline_data`).
const SLOT_FORMAT: u32 = 2;

/// Slot images the cache keeps (the most recently used): each is a few hundred MiB, and all
/// but the last few are rarely reused (`cargo xtask cache prune` removes older ones by age).
pub const SLOTS_KEPT: usize = 4;

/// A finished slot image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlotImage {
    /// The image file (erofs data, then the verity superblock and tree).
    pub path: PathBuf,
    /// Bytes of erofs data (the verity hash offset).
    pub data_size: u64,
    /// Bytes of the whole image.
    pub size: u64,
    /// sha256 of the whole image.
    pub sha256: String,
    /// Verity parameters.
    pub verity: VerityInfo,
}

/// Inputs that decide a slot image's bytes.
#[derive(Debug, Clone, Serialize)]
pub struct SlotParams {
    /// The rootfs commit.
    pub commit: String,
    /// Filesystem UUID (derived from the recipe).
    pub fs_uuid: String,
    /// Verity salt, hex (derived from the recipe).
    pub salt: String,
    /// Verity superblock UUID (derived from the recipe).
    pub verity_uuid: [u8; 16],
    /// Timestamp of every inode.
    pub source_date: u64,
    /// erofs compression (serialised as mkfs.erofs names it, so that keys made when this was
    /// always lz4 still match).
    pub compressor: RootfsCompression,
}

impl SlotParams {
    fn key(&self) -> String {
        let doc = serde_json::json!({ "format": SLOT_FORMAT, "params": self });
        hex::encode(Sha256::digest(doc.to_string().as_bytes()))
    }
}

/// A deterministic 16-byte value for `purpose` from the recipe hash, formatted as a UUID.
pub fn derived_uuid(recipe_sha256: &str, purpose: &str) -> [u8; 16] {
    let d = Sha256::digest(format!("aperture:{purpose}:{recipe_sha256}").as_bytes());
    let mut u = [0u8; 16];
    u.copy_from_slice(&d[..16]);
    u[6] = (u[6] & 0x0f) | 0x40; // RFC 4122 version 4 layout
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// A 32-byte salt for `purpose` from the recipe hash.
pub fn derived_salt(recipe_sha256: &str, purpose: &str) -> String {
    hex::encode(Sha256::digest(
        format!("aperture:salt:{purpose}:{recipe_sha256}").as_bytes(),
    ))
}

/// Build (or reuse) the slot image for `params.commit` and copy it to `dest`.
pub fn build(
    store: &Store,
    params: &SlotParams,
    cache: &Path,
    dest: &Path,
    step: &Step<'_>,
) -> Result<SlotImage> {
    let key = params.key();
    let cached = cache.join("slots").join(format!("{}.img", &key[..32]));
    let cached_meta = cached.with_extension("json");
    std::fs::create_dir_all(cached.parent().expect("has parent"))?;
    let image = match read_cached(&cached, &cached_meta)? {
        Some(img) => {
            step.reused();
            // Used now: the last to be evicted.
            let _ = File::options()
                .write(true)
                .open(&cached)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            img
        }
        None => {
            let img = make(store, params, cache, &cached, step)?;
            let mut json = serde_json::to_vec_pretty(&img)?;
            json.push(b'\n');
            // The metadata is written last: an image without it is never trusted.
            std::fs::write(&cached_meta, json)?;
            let evicted = evict(&cache.join("slots"), SLOTS_KEPT);
            if evicted > 0 {
                step.line(&format!(
                    "{evicted} older slot images removed from the cache (it keeps {SLOTS_KEPT})"
                ));
            }
            img
        }
    };
    copy_file(&image.path, dest)?;
    step.note(format!(
        "{} ({} MiB erofs + verity, root hash {})",
        dest.display(),
        image.data_size >> 20,
        &image.verity.root_hash.as_str()[..16]
    ));
    Ok(SlotImage {
        path: dest.to_path_buf(),
        ..image
    })
}

/// Remove all but the `keep` most recently used slot images (and their metadata) from
/// `dir`; returns how many went. Failures are left for `cache prune`.
fn evict(dir: &Path, keep: usize) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut images: Vec<(std::time::SystemTime, PathBuf)> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "img"))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    images.sort_by_key(|i| std::cmp::Reverse(i.0));
    let mut n = 0;
    for (_, p) in images.into_iter().skip(keep) {
        // Metadata first: an image without it is never trusted, so a half-done removal is safe.
        let _ = std::fs::remove_file(p.with_extension("json"));
        if std::fs::remove_file(&p).is_ok() {
            n += 1;
        }
    }
    n
}

fn read_cached(img: &Path, meta: &Path) -> Result<Option<SlotImage>> {
    let (Ok(text), Ok(m)) = (std::fs::read_to_string(meta), img.metadata()) else {
        return Ok(None);
    };
    let parsed: SlotImage = match serde_json::from_str(&text) {
        Ok(p) => p,
        Err(_) => return Ok(None),
    };
    // A cheap integrity check; `verify` re-hashes everything later anyway.
    if m.len() != parsed.size {
        return Ok(None);
    }
    Ok(Some(parsed))
}

fn make(
    store: &Store,
    params: &SlotParams,
    cache: &Path,
    out: &Path,
    step: &Step<'_>,
) -> Result<SlotImage> {
    let tree = cache
        .join("tmp")
        .join(format!("checkout-{}", &params.commit[..16]));
    if tree.exists() {
        std::fs::remove_dir_all(&tree)?;
    }
    step.line(&format!("checking out {}", &params.commit[..16]));
    store.checkout(&params.commit, &tree)?;
    let tmp = out.with_extension("img.tmp");
    let _ = std::fs::remove_file(&tmp);
    step.line("mkfs.erofs");
    let result = mkfs(params, &tree, &tmp).stream(|l| step.line(l));
    std::fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    result.context("packing the rootfs with mkfs.erofs")?;

    let mut f = OpenOptions::new().read(true).write(true).open(&tmp)?;
    let len = f.metadata()?.len();
    let data_size = len.div_ceil(4096) * 4096;
    if data_size != len {
        f.set_len(data_size)?;
    }
    step.line("dm-verity hash tree");
    let salt = hex::decode(&params.salt).context("salt is not hex")?;
    let info = verity::append_hash_tree(&mut f, data_size, &salt, params.verity_uuid)?;
    f.sync_all()?;
    drop(f);
    let size = std::fs::metadata(&tmp)?.len();
    let sha256 = aperture_trust::digest::sha256_file(&tmp)?.0.to_string();
    std::fs::rename(&tmp, out)?;
    Ok(SlotImage {
        path: out.to_path_buf(),
        data_size,
        size,
        sha256,
        verity: info,
    })
}

/// The mkfs.erofs command that packs `tree` into `image` as `params` say.
fn mkfs(params: &SlotParams, tree: &Path, image: &Path) -> Cmd {
    Cmd::new("mkfs.erofs")
        .args(params.compressor.mkfs_args())
        .arg(format!("-T{}", params.source_date))
        .arg(format!("-U{}", params.fs_uuid))
        .arg("--quiet")
        .arg(image)
        .arg(tree)
}

/// Copy a file, replacing `dest` atomically.
pub fn copy_file(src: &Path, dest: &Path) -> Result<()> {
    let tmp = dest.with_extension("tmp-copy");
    std::fs::copy(src, &tmp)
        .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
    std::fs::rename(&tmp, dest)?;
    Ok(())
}

/// Fail clearly when a slot image does not fit its partition.
pub fn check_fits(image: &SlotImage, partition_bytes: u64, what: &str) -> Result<()> {
    if image.size > partition_bytes {
        bail!(
            "the rootfs image is {} MiB but the {what} partition is {} MiB: raise partitions.rootfs in the recipe",
            image.size.div_ceil(1 << 20),
            partition_bytes >> 20
        );
    }
    Ok(())
}

/// Open a file read-only with a message naming it.
pub fn open(path: &Path) -> Result<File> {
    File::open(path).with_context(|| format!("opening {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    /// The file type, erofs data layout and size of every inode in `image`, by path
    /// (superblock at 1024, inodes from `meta_blkaddr`, directories read through their
    /// dirents; only what the test needs).
    fn layouts(image: &[u8]) -> std::collections::BTreeMap<String, (u16, u16, u64)> {
        let le16 = |o: usize| u16::from_le_bytes([image[o], image[o + 1]]);
        let le32 = |o: usize| u32::from_le_bytes(image[o..o + 4].try_into().unwrap());
        let le64 = |o: usize| u64::from_le_bytes(image[o..o + 8].try_into().unwrap());
        assert_eq!(le32(1024), 0xE0F5_E1E2, "erofs magic");
        let meta = le32(1024 + 40) as usize * 4096;
        let mut out = std::collections::BTreeMap::new();
        let mut todo = vec![(u64::from(le16(1024 + 14)), String::from("/"))];
        while let Some((nid, path)) = todo.pop() {
            let at = meta + nid as usize * 32;
            let (format, xattrs, mode) = (le16(at), le16(at + 2), le16(at + 4));
            let extended = format & 1 == 1;
            let layout = (format >> 1) & 7;
            let size = if extended {
                le64(at + 8)
            } else {
                u64::from(le32(at + 8))
            };
            let block = le32(at + 16) as usize;
            out.insert(path.clone(), (mode & 0o170000, layout, size));
            if mode & 0o170000 != 0o040000 {
                continue;
            }
            let head = if extended { 64 } else { 32 }
                + if xattrs > 0 {
                    12 + (xattrs as usize - 1) * 4
                } else {
                    0
                };
            let size = size as usize;
            let full = if layout == 2 {
                size / 4096
            } else {
                size.div_ceil(4096)
            };
            let mut data = if full > 0 {
                image[block * 4096..(block + full) * 4096].to_vec()
            } else {
                Vec::new()
            };
            if layout == 2 {
                data.extend_from_slice(&image[at + head..at + head + size - full * 4096]);
            }
            for chunk in data[..size].chunks(4096) {
                let count = usize::from(u16::from_le_bytes([chunk[8], chunk[9]])) / 12;
                for i in 0..count {
                    let d = i * 12;
                    let child = u64::from_le_bytes(chunk[d..d + 8].try_into().unwrap());
                    let start = usize::from(u16::from_le_bytes([chunk[d + 8], chunk[d + 9]]));
                    let end = if i + 1 < count {
                        usize::from(u16::from_le_bytes([chunk[d + 20], chunk[d + 21]]))
                    } else {
                        chunk.len()
                    };
                    let name = String::from_utf8_lossy(&chunk[start..end]);
                    let name = name.trim_end_matches('\0');
                    if name != "." && name != ".." {
                        todo.push((child, format!("{}/{name}", path.trim_end_matches('/'))));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn file_tails_are_kept_out_of_the_metadata_so_an_added_file_moves_no_file_data() {
        let Some(_) =
            aperture_sys::tool::for_test("mkfs.erofs", "erofs-utils", "slot image layout")
        else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("usr/bin")).unwrap();
        std::fs::create_dir_all(tree.join("var/lib")).unwrap();
        // Files with partial last blocks, before and after the one added later.
        std::fs::write(tree.join("usr/bin/a"), vec![b'a'; 5000]).unwrap();
        std::fs::write(tree.join("var/lib/status"), vec![b's'; 9000]).unwrap();
        let params = |compressor| SlotParams {
            commit: "0".repeat(64),
            fs_uuid: "6c3f1a52-1b7e-4c1d-9a57-0b5a3c0e1f20".into(),
            salt: "00".into(),
            verity_uuid: [0; 16],
            source_date: 1_700_000_000,
            compressor,
        };
        for compressor in [RootfsCompression::None, RootfsCompression::Lz4] {
            let made = |name: &str| {
                let image = dir.path().join(name);
                mkfs(&params(compressor), &tree, &image).run().unwrap();
                std::fs::read(image).unwrap()
            };
            let before = made("before.img");
            std::fs::write(tree.join("usr/bin/added"), vec![b'n'; 3000]).unwrap();
            let after = made("after.img");
            std::fs::remove_file(tree.join("usr/bin/added")).unwrap();

            let (lb, la) = (layouts(&before), layouts(&after));
            assert_eq!(la.len(), lb.len() + 1, "{compressor:?}: {la:?}");
            let files: Vec<_> = la.iter().filter(|(_, l)| l.0 == 0o100000).collect();
            assert_eq!(files.len(), 3, "{compressor:?}: {la:?}");
            for (path, (_, layout, size)) in files {
                // 2 is EROFS_INODE_FLAT_INLINE: a file's tail stored after its inode, which
                // moves with the inode when a file is added before it.
                assert_ne!(*layout, 2, "{compressor:?}: {path} has its tail inline");
                if path != "/usr/bin/added" {
                    assert_eq!(lb.get(path).map(|l| l.2), Some(*size), "{path}");
                }
            }
            // The files are whole in their blocks: the bytes before the added file's are
            // found unchanged in the new image (what a delta copies).
            if compressor == RootfsCompression::None {
                let tail = vec![b's'; 9000 - 8192];
                assert!(after.windows(tail.len()).any(|w| w == tail.as_slice()));
            }
        }
    }

    #[test]
    fn the_cache_keeps_the_most_recently_used_slot_images() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = SystemTime::now() - Duration::from_secs(1000);
        for (i, name) in ["a", "b", "c", "d", "e", "f"].iter().enumerate() {
            let img = dir.path().join(format!("{name}.img"));
            std::fs::write(&img, b"image").unwrap();
            std::fs::write(dir.path().join(format!("{name}.json")), b"{}").unwrap();
            File::options()
                .write(true)
                .open(&img)
                .unwrap()
                .set_modified(t0 + Duration::from_secs(10 * i as u64))
                .unwrap();
        }
        // "a" is the oldest made, but was used last.
        File::options()
            .write(true)
            .open(dir.path().join("a.img"))
            .unwrap()
            .set_modified(SystemTime::now())
            .unwrap();
        assert_eq!(evict(dir.path(), 4), 2);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["a.img", "a.json", "d.img", "d.json", "e.img", "e.json", "f.img", "f.json"]
        );
        assert_eq!(evict(dir.path(), 4), 0);
    }
}
