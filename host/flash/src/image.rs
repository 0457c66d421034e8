//! A build folder checked for flashing: [`VerifiedImage::open`] verifies `manifest.sig` and
//! the key chain against the trusted root key, then that the compressed image and its bmap
//! are byte for byte the files the manifest signed, before anything is written anywhere.
//!
//! The compressed image is hashed again while it streams to each target (see
//! [`crate::writer`]), so a file swapped between this check and the write is caught too.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use aperture_trust::digest::HashingReader;
use aperture_trust::keys::PublicKey;
use aperture_trust::manifest::{Artifact, Manifest, Role, Sha256Hex};
use aperture_trust::signing::{verify_manifest, VerifiedManifest};

use crate::bmap::Bmap;
use crate::error::{FlashError, Result};

/// File names in a build folder.
pub mod names {
    /// The manifest.
    pub const MANIFEST: &str = "manifest.json";
    /// Its detached signature and keyring.
    pub const SIGNATURE: &str = "manifest.sig";
    /// The root public key the build was made for: trusted by default.
    pub const ROOT_PUB: &str = "root.pub";
}

/// Largest manifest, signature or bmap read into memory.
const MAX_SMALL_FILE: u64 = 64 << 20;

/// A build folder whose signature, key chain, compressed image and bmap have been verified.
#[derive(Debug, Clone)]
pub struct VerifiedImage {
    dir: PathBuf,
    manifest: VerifiedManifest,
    root_key_id: String,
    bmap: Bmap,
    source: Source,
}

/// What a [`VerifiedImage`] is written from.
#[derive(Debug, Clone)]
pub enum Source {
    /// `disk.img.zst`, hashed whole against the manifest when opened.
    Compressed {
        /// Its path.
        path: PathBuf,
        /// Its signed sha256.
        sha256: Sha256Hex,
        /// Its signed size.
        size: u64,
    },
    /// The raw `disk.img`, checked range by range ([`VerifiedImage::open_raw`]).
    Raw(PathBuf),
}

impl VerifiedImage {
    /// Verifies the build folder `dir` against the root key in `root_key` (default: the
    /// folder's own `root.pub`, the key the build was made for) at time `now` (unix seconds).
    pub fn open(dir: &Path, root_key: Option<&Path>, now: u64) -> Result<VerifiedImage> {
        let (root, shown) = Self::root_key(dir, root_key)?;
        Self::open_with_key(dir, &root, &shown, now)
    }

    /// Like [`VerifiedImage::open`], but the image is written from the folder's raw
    /// `disk.img` rather than decompressed from `disk.img.zst`: only the ranges the bmap maps
    /// are read, so the holes cost nothing.
    ///
    /// The raw image is large and mostly holes, so it is not hashed whole before writing.
    /// Instead every range the bmap maps must carry a checksum: the signed bmap then covers
    /// every byte written, each range is read back from the target and checked against it,
    /// and the partition table goes down only after all of them matched. A `disk.img` changed
    /// after signing is therefore caught at read-back and leaves no bootable disk. A bmap
    /// without range checksums, or a `disk.img` whose size differs from the signed one, is
    /// refused (flash from `disk.img.zst` then).
    pub fn open_raw(dir: &Path, root_key: Option<&Path>, now: u64) -> Result<VerifiedImage> {
        let (root, shown) = Self::root_key(dir, root_key)?;
        Self::verify(dir, &root, &shown, now, true)
    }

    /// The root key at `root_key` (default: the folder's own `root.pub`), and its path for
    /// messages.
    fn root_key(dir: &Path, root_key: Option<&Path>) -> Result<(PublicKey, String)> {
        let key_path = root_key
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.join(names::ROOT_PUB));
        let root = PublicKey::load(&key_path).map_err(|source| FlashError::Untrusted {
            dir: dir.to_path_buf(),
            root_key: key_path.display().to_string(),
            source: Box::new(source),
        })?;
        Ok((root, key_path.display().to_string()))
    }

    /// Verifies `dir` against `root`; `root_shown` says where the key came from, for messages.
    pub fn open_with_key(
        dir: &Path,
        root: &PublicKey,
        root_shown: &str,
        now: u64,
    ) -> Result<VerifiedImage> {
        Self::verify(dir, root, root_shown, now, false)
    }

    fn verify(
        dir: &Path,
        root: &PublicKey,
        root_shown: &str,
        now: u64,
        raw: bool,
    ) -> Result<VerifiedImage> {
        let bad = |reason: String| FlashError::Image {
            dir: dir.to_path_buf(),
            reason,
        };
        let manifest_json = read_small(&dir.join(names::MANIFEST))?;
        let sig_json = read_small(&dir.join(names::SIGNATURE))?;
        let root_key_id = root.key_id().to_string();
        let manifest = verify_manifest(&manifest_json, &sig_json, root, now).map_err(|source| {
            FlashError::Untrusted {
                dir: dir.to_path_buf(),
                root_key: format!("{root_key_id} ({root_shown})"),
                source: Box::new(source),
            }
        })?;

        let zst = optional_artifact(&manifest, Role::DiskZst).map_err(&bad)?;
        let bmap_artifact = one_artifact(&manifest, Role::Bmap).map_err(&bad)?;

        let bmap_path = dir.join(bmap_artifact.name.as_str());
        let bmap_bytes = read_small(&bmap_path)?;
        check_bytes(&bmap_artifact, &bmap_bytes).map_err(&bad)?;
        let text = String::from_utf8(bmap_bytes)
            .map_err(|_| bad(format!("{} is not UTF-8 text", bmap_artifact.name)))?;
        let bmap = Bmap::parse(&text)?;
        if let Some(disk) = manifest.artifacts.iter().find(|a| a.role == Role::Disk) {
            if disk.size != bmap.image_size {
                return Err(bad(format!(
                    "the bmap maps an image of {} bytes but the manifest's {} is {} bytes",
                    bmap.image_size, disk.name, disk.size
                )));
            }
        }
        if bmap.ranges.is_empty() {
            return Err(bad("the bmap maps no data at all".into()));
        }

        if raw {
            let alternative = match &zst {
                Some(z) => format!("flash from {} instead", z.name),
                None => "rebuild it with the bmap's checksums".to_string(),
            };
            let raw_path = raw_disk(dir, &manifest, &bmap, &alternative).map_err(&bad)?;
            return Ok(VerifiedImage {
                dir: dir.to_path_buf(),
                root_key_id,
                bmap,
                source: Source::Raw(raw_path),
                manifest,
            });
        }
        let Some(zst) = zst else {
            return Err(bad(format!(
                "the build has no compressed disk image (its recipe sets [outputs] \
                 compressed_disk = false); flash its {} with --input raw",
                one_artifact(&manifest, Role::Disk)
                    .map(|a| a.name.to_string())
                    .unwrap_or_else(|_| "disk.img".into())
            )));
        };
        let zst_path = dir.join(zst.name.as_str());
        let file = File::open(&zst_path)
            .map_err(|e| FlashError::io(format!("opening {}", zst_path.display()), e))?;
        let mut reader = HashingReader::new(file);
        io::copy(&mut reader, &mut io::sink())
            .map_err(|e| FlashError::io(format!("reading {}", zst_path.display()), e))?;
        let (_, digest, size) = reader.finish();
        if size != zst.size || digest != zst.sha256 {
            return Err(bad(format!(
                "{} does not match the signed manifest (sha256 {digest}, {size} bytes; the \
                 manifest says {}, {} bytes): it was changed or damaged after signing; copy \
                 the build folder again or rebuild",
                zst.name, zst.sha256, zst.size
            )));
        }
        Ok(VerifiedImage {
            dir: dir.to_path_buf(),
            root_key_id,
            bmap,
            source: Source::Compressed {
                path: zst_path,
                sha256: zst.sha256.clone(),
                size: zst.size,
            },
            manifest,
        })
    }

    /// The build folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        self.manifest.manifest()
    }

    /// The id of the root key the manifest verified against.
    pub fn root_key_id(&self) -> &str {
        &self.root_key_id
    }

    /// The id of the release key that signed the manifest.
    pub fn signing_key_id(&self) -> String {
        self.manifest.key_id().to_string()
    }

    /// The block map.
    pub fn bmap(&self) -> &Bmap {
        &self.bmap
    }

    /// Size of the uncompressed disk image: what a target must hold.
    pub fn image_size(&self) -> u64 {
        self.bmap.image_size
    }

    /// Bytes the bmap maps: what is written.
    pub fn mapped_bytes(&self) -> u64 {
        self.bmap.mapped_bytes()
    }

    /// What the image is written from.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The raw image written from, when opened with [`VerifiedImage::open_raw`].
    pub fn raw_path(&self) -> Option<&Path> {
        match &self.source {
            Source::Raw(p) => Some(p),
            Source::Compressed { .. } => None,
        }
    }
}

/// The folder's raw disk image, checked for writing from: the manifest lists it with the
/// bmap's image size, it has that size, and every mapped range has a checksum.
fn raw_disk(
    dir: &Path,
    manifest: &Manifest,
    bmap: &Bmap,
    alternative: &str,
) -> std::result::Result<PathBuf, String> {
    let disk = one_artifact(manifest, Role::Disk)?;
    if let Some(range) = bmap.ranges.iter().find(|r| r.checksum.is_none()) {
        return Err(format!(
            "the bmap has no checksum for blocks {}-{}, so {} cannot be checked range by \
             range; {alternative}",
            range.first, range.last, disk.name
        ));
    }
    let path = dir.join(disk.name.as_str());
    let size = std::fs::metadata(&path)
        .map_err(|e| format!("cannot read {}: {e}; {alternative}", path.display()))?
        .len();
    if size != disk.size {
        return Err(format!(
            "{} is {size} bytes but the signed manifest says {}: it was changed after \
             signing; copy the build folder again or rebuild",
            disk.name, disk.size
        ));
    }
    Ok(path)
}

/// The artifact with `role`, if the manifest lists one (and no more).
fn optional_artifact(
    manifest: &Manifest,
    role: Role,
) -> std::result::Result<Option<Artifact>, String> {
    if manifest.artifacts.iter().any(|a| a.role == role) {
        one_artifact(manifest, role).map(Some)
    } else {
        Ok(None)
    }
}

/// The one artifact with `role`.
fn one_artifact(manifest: &Manifest, role: Role) -> std::result::Result<Artifact, String> {
    let mut found = manifest.artifacts.iter().filter(|a| a.role == role);
    match (found.next(), found.next()) {
        (Some(a), None) => Ok(a.clone()),
        (None, _) => Err(format!(
            "the manifest lists no {} artifact; build with an image builder that makes one",
            role_name(role)
        )),
        (Some(_), Some(_)) => Err(format!(
            "the manifest lists more than one {} artifact",
            role_name(role)
        )),
    }
}

fn role_name(role: Role) -> String {
    serde_json::to_string(&role)
        .map(|s| s.trim_matches('"').to_string())
        .unwrap_or_else(|_| format!("{role:?}"))
}

fn check_bytes(artifact: &Artifact, bytes: &[u8]) -> std::result::Result<(), String> {
    let digest = Sha256Hex::digest(bytes);
    if bytes.len() as u64 != artifact.size || digest != artifact.sha256 {
        return Err(format!(
            "{} does not match the signed manifest (sha256 {digest}, {} bytes; the manifest \
             says {}, {} bytes): it was changed after signing; copy the build folder again or \
             rebuild",
            artifact.name,
            bytes.len(),
            artifact.sha256,
            artifact.size
        ));
    }
    Ok(())
}

/// Reads a small file whole, refusing one larger than [`MAX_SMALL_FILE`].
fn read_small(path: &Path) -> Result<Vec<u8>> {
    let file =
        File::open(path).map_err(|e| FlashError::io(format!("opening {}", path.display()), e))?;
    let mut bytes = Vec::new();
    file.take(MAX_SMALL_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| FlashError::io(format!("reading {}", path.display()), e))?;
    if bytes.len() as u64 > MAX_SMALL_FILE {
        return Err(FlashError::io(
            format!("reading {}", path.display()),
            io::Error::other(format!("it is larger than {MAX_SMALL_FILE} bytes")),
        ));
    }
    Ok(bytes)
}
