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

/// Bump to invalidate cached slot images when the way they are made changes.
const SLOT_FORMAT: u32 = 1;

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
    let result = Cmd::new("mkfs.erofs")
        .args(params.compressor.mkfs_arg())
        .arg(format!("-T{}", params.source_date))
        .arg(format!("-U{}", params.fs_uuid))
        .arg("--quiet")
        .arg(&tmp)
        .arg(&tree)
        .stream(|l| step.line(l));
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
