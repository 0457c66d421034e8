//! Model bundles: a detection model (its folder: `manifest.toml`, the model file, `golden/`
//! inputs and reference) replaceable on the appliance without an OS update, signed by a release
//! key of the same chain as OS bundles (root key → root-signed keyring → release key).
//!
//! A model bundle is an uncompressed POSIX ustar archive with exactly these entries, in order:
//!
//! 1. `model.json` (at most 1 MiB): the [`ModelManifest`], pretty sorted JSON;
//! 2. `model.sig` (at most 64 KiB): a [`crate::signing::ManifestSignature`] over the canonical
//!    bytes of `model.json` (the same format as an OS bundle's `manifest.sig`);
//! 3. every file of the manifest, in manifest order, named by its relative path (`golden/x.ppm`):
//!    exactly `size` bytes hashing to `sha256`;
//!
//! then the end-of-archive marker. Headers are deterministic (mode 0644, uid 0, mtime
//! `created`); directories are implied by the paths and never stored; any other entry type,
//! pax or GNU record, absolute or `..` path is refused.
//!
//! The model's identity on the appliance is the sha256 of the canonical `model.json`
//! ([`VerifiedModel::digest`]): it covers every file's hash, the name and the version.
//!
//! Model bundles know nothing of the model format: the caller checks that the model file
//! matches its own `manifest.toml` (aperture-vision) before it signs or switches to one.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::bundle::ustar::{self, Block, BLOCK};
use crate::bundle::{MAX_MANIFEST_SIZE, MAX_SIGNATURE_SIZE};
use crate::digest::{sha256_file, HashingReader, HashingWriter, Sha256Hex};
use crate::keys::{KeyId, PublicKey, SignedKeyring, SigningKeyPair};
use crate::manifest::ArtifactName;
use crate::signing::{sign_document, verify_document};
use crate::TrustError;

/// Name of the first entry.
pub const MODEL_MANIFEST_ENTRY: &str = "model.json";
/// Name of the second entry.
pub const MODEL_SIGNATURE_ENTRY: &str = "model.sig";
/// The `format` this crate reads and writes.
pub const MODEL_FORMAT: u32 = 1;
/// The `kind` of every model manifest: an OS manifest can never parse as one, nor the reverse.
pub const MODEL_KIND: &str = "aperture-model";
/// Most files in one model.
pub const MAX_MODEL_FILES: usize = 256;
/// Largest file in a model, bytes.
pub const MAX_MODEL_FILE_SIZE: u64 = 4 << 30;
/// Most zero bytes accepted after the end-of-archive marker (tar pads to 10 KiB records).
const MAX_TRAILING_ZEROS: u64 = 20 * BLOCK as u64;

/// A file's path inside a model folder: 1 to 4 [`ArtifactName`]s joined by '/', at most 100
/// bytes (one ustar name field), so never absolute, hidden, `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModelPath(String);

impl ModelPath {
    /// Validates `path`.
    pub fn new(path: impl Into<String>) -> Result<ModelPath, TrustError> {
        let path = path.into();
        let parts: Vec<&str> = path.split('/').collect();
        if path.len() > 100 || parts.len() > 4 {
            return Err(TrustError::malformed(
                format!("model file path {path:?}"),
                "longer than 100 bytes or deeper than 4 folders; shorten it",
            ));
        }
        for part in parts {
            ArtifactName::new(part).map_err(|_| TrustError::UnsafeEntryPath {
                entry: path.clone(),
            })?;
        }
        Ok(ModelPath(path))
    }

    /// The path, '/'-separated.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ModelPath {
    type Error = TrustError;
    fn try_from(s: String) -> Result<Self, TrustError> {
        ModelPath::new(s)
    }
}

impl From<ModelPath> for String {
    fn from(p: ModelPath) -> String {
        p.0
    }
}

impl std::fmt::Display for ModelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One file of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// Where it goes in the model folder.
    pub path: ModelPath,
    /// Its size in bytes.
    pub size: u64,
    /// Its sha256.
    pub sha256: Sha256Hex,
}

/// `model.json`: what a model bundle holds, signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    /// [`MODEL_FORMAT`].
    pub format: u32,
    /// [`MODEL_KIND`].
    pub kind: String,
    /// The model's name (its `manifest.toml`'s `[model] name`).
    pub name: ArtifactName,
    /// The bundle's version: an appliance refuses one older than the installed one.
    pub version: semver::Version,
    /// When it was made (unix seconds, `SOURCE_DATE_EPOCH`): the signing key must have been
    /// valid then.
    pub created: u64,
    /// Every file, in archive order.
    pub files: Vec<ModelFile>,
}

impl ModelManifest {
    /// The manifest of the files `paths` of the folder `dir`, hashed now.
    pub fn of_folder(
        dir: &Path,
        paths: &[ModelPath],
        name: ArtifactName,
        version: semver::Version,
        created: u64,
    ) -> Result<ModelManifest, TrustError> {
        let mut files = Vec::new();
        for path in paths {
            let file = dir.join(path.as_str());
            let meta = std::fs::symlink_metadata(&file)
                .map_err(|e| TrustError::io(format!("reading {}", file.display()), e))?;
            if !meta.file_type().is_file() {
                return Err(TrustError::EntryTypeNotAllowed {
                    entry: file.display().to_string(),
                    kind: "not a regular file".into(),
                });
            }
            let (sha256, size) = sha256_file(&file)?;
            files.push(ModelFile {
                path: path.clone(),
                size,
                sha256,
            });
        }
        let m = ModelManifest {
            format: MODEL_FORMAT,
            kind: MODEL_KIND.into(),
            name,
            version,
            created,
            files,
        };
        m.validate()?;
        Ok(m)
    }

    /// Format, kind, file count and sizes, no path twice, no path inside another file's path.
    pub fn validate(&self) -> Result<(), TrustError> {
        let bad = |why: String| Err(TrustError::malformed(MODEL_MANIFEST_ENTRY, why));
        if self.format != MODEL_FORMAT {
            return bad(format!(
                "format {} is not supported (this build reads format {MODEL_FORMAT}); update \
                 the appliance software first",
                self.format
            ));
        }
        if self.kind != MODEL_KIND {
            return bad(format!("kind {:?} is not {MODEL_KIND:?}", self.kind));
        }
        if self.files.is_empty() || self.files.len() > MAX_MODEL_FILES {
            return bad(format!(
                "{} files; a model has 1 to {MAX_MODEL_FILES}",
                self.files.len()
            ));
        }
        for (i, f) in self.files.iter().enumerate() {
            if f.size > MAX_MODEL_FILE_SIZE {
                return Err(TrustError::Oversized {
                    entry: f.path.to_string(),
                    limit: MAX_MODEL_FILE_SIZE,
                });
            }
            for g in &self.files[..i] {
                let (a, b) = (f.path.as_str(), g.path.as_str());
                if a == b || a.starts_with(&format!("{b}/")) || b.starts_with(&format!("{a}/")) {
                    return bad(format!("{a} and {b} cannot both be in a model folder"));
                }
            }
        }
        Ok(())
    }

    /// The file at `path`, if listed.
    pub fn file(&self, path: &str) -> Option<&ModelFile> {
        self.files.iter().find(|f| f.path.as_str() == path)
    }
}

/// A model manifest whose signature chain was verified. Only [`verify_model_manifest`] makes
/// one.
#[derive(Debug, Clone)]
pub struct VerifiedModel {
    manifest: ModelManifest,
    key_id: KeyId,
    digest: Sha256Hex,
    manifest_json: Vec<u8>,
    sig_json: Vec<u8>,
}

impl VerifiedModel {
    /// The manifest.
    pub fn manifest(&self) -> &ModelManifest {
        &self.manifest
    }
    /// The release key that signed it.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }
    /// sha256 of the canonical `model.json`: the model's identity on the appliance.
    pub fn digest(&self) -> &Sha256Hex {
        &self.digest
    }
    /// `model.json` as read, to keep beside the model and verify again later.
    pub fn manifest_json(&self) -> &[u8] {
        &self.manifest_json
    }
    /// `model.sig` as read.
    pub fn sig_json(&self) -> &[u8] {
        &self.sig_json
    }
}

/// Signs `manifest` with `release` (listed in `keyring`): `(model.json, model.sig)`.
pub fn sign_model_manifest(
    manifest: &ModelManifest,
    release: &SigningKeyPair,
    keyring: &SignedKeyring,
) -> Result<(Vec<u8>, Vec<u8>), TrustError> {
    manifest.validate()?;
    sign_document(manifest, release, keyring)
}

/// Verifies `model.json` and `model.sig` against the trusted `root` key at `now` (unix
/// seconds; [`crate::signing::VERIFIED_WHEN_WRITTEN`] for one verified when installed): the
/// chain as for OS manifests, then the manifest parsed from the canonical bytes, and the key
/// valid at the manifest's `created` too.
pub fn verify_model_manifest(
    manifest_json: &[u8],
    sig_json: &[u8],
    root: &PublicKey,
    now: u64,
) -> Result<VerifiedModel, TrustError> {
    let doc = verify_document(manifest_json, sig_json, root, now, MODEL_SIGNATURE_ENTRY)?;
    let manifest: ModelManifest = serde_json::from_slice(&doc.canonical)
        .map_err(|e| TrustError::malformed(MODEL_MANIFEST_ENTRY, e))?;
    manifest.validate()?;
    doc.key.check_not_expired(manifest.created)?;
    Ok(VerifiedModel {
        manifest,
        key_id: doc.key.key_id,
        digest: Sha256Hex::digest(&doc.canonical),
        manifest_json: manifest_json.to_vec(),
        sig_json: sig_json.to_vec(),
    })
}

/// Writes a model bundle of the folder `dir` to `out` and returns `out` (the caller flushes
/// and syncs it). Every file is checked against the manifest while it is copied, so a bundle
/// an appliance would refuse is not produced. On error `out` holds a partial bundle; delete it.
pub fn write_model_bundle<W: Write>(
    mut out: W,
    manifest_json: &[u8],
    sig_json: &[u8],
    dir: &Path,
) -> Result<W, TrustError> {
    let manifest: ModelManifest = serde_json::from_slice(manifest_json)
        .map_err(|e| TrustError::malformed(MODEL_MANIFEST_ENTRY, e))?;
    manifest.validate()?;
    for (name, data, limit) in [
        (MODEL_MANIFEST_ENTRY, manifest_json, MAX_MANIFEST_SIZE),
        (MODEL_SIGNATURE_ENTRY, sig_json, MAX_SIGNATURE_SIZE),
    ] {
        if data.len() as u64 > limit {
            return Err(TrustError::Oversized {
                entry: name.into(),
                limit,
            });
        }
        write_entry(&mut out, name, data.len() as u64, manifest.created, data)?;
    }
    for f in &manifest.files {
        let path = dir.join(f.path.as_str());
        let file = File::open(&path)
            .map_err(|e| TrustError::io(format!("opening {}", path.display()), e))?;
        let mut reader = HashingReader::new(BufReader::new(file).take(f.size + 1));
        out.write_all(&ustar::build_relative(
            f.path.as_str(),
            f.size,
            manifest.created,
        )?)
        .and_then(|()| io::copy(&mut reader, &mut out).map(drop))
        .map_err(|e| TrustError::io(format!("copying {} into the bundle", path.display()), e))?;
        let (_, sha256, size) = reader.finish();
        if size != f.size {
            return Err(TrustError::SizeMismatch {
                artifact: path.display().to_string(),
                expected: f.size,
                actual: size,
            });
        }
        if sha256 != f.sha256 {
            return Err(TrustError::HashMismatch {
                artifact: path.display().to_string(),
                expected: f.sha256.to_string(),
                actual: sha256.to_string(),
            });
        }
        write_padding(&mut out, size)?;
    }
    out.write_all(&[0u8; 2 * BLOCK])
        .map_err(|e| TrustError::io("writing the bundle's end", e))?;
    Ok(out)
}

fn write_entry(
    out: &mut impl Write,
    name: &str,
    size: u64,
    mtime: u64,
    data: &[u8],
) -> Result<(), TrustError> {
    out.write_all(&ustar::build(name, size, mtime)?)
        .and_then(|()| out.write_all(data))
        .map_err(|e| TrustError::io(format!("writing bundle entry {name}"), e))?;
    write_padding(out, size)
}

fn write_padding(out: &mut impl Write, size: u64) -> Result<(), TrustError> {
    out.write_all(&[0u8; BLOCK][..ustar::padding(size) as usize])
        .map_err(|e| TrustError::io("writing the bundle", e))
}

/// Reads a model bundle: [`read_header`](Self::read_header) (signature chain), the caller's
/// policy (version, rejected models), then [`unpack_into`](Self::unpack_into).
pub struct ModelBundleReader<R> {
    inner: R,
    root: PublicKey,
    now: u64,
    header: Option<ModelManifest>,
}

impl<R: Read> ModelBundleReader<R> {
    /// A reader of `inner` that trusts `root` at `now` (unix seconds).
    pub fn new(inner: R, root: &PublicKey, now: u64) -> Self {
        ModelBundleReader {
            inner,
            root: *root,
            now,
            header: None,
        }
    }

    /// Reads `model.json` and `model.sig` and verifies them.
    pub fn read_header(&mut self) -> Result<VerifiedModel, TrustError> {
        let manifest_json = self.small_entry(MODEL_MANIFEST_ENTRY, MAX_MANIFEST_SIZE)?;
        let sig_json = self.small_entry(MODEL_SIGNATURE_ENTRY, MAX_SIGNATURE_SIZE)?;
        let v = verify_model_manifest(&manifest_json, &sig_json, &self.root, self.now)?;
        self.header = Some(v.manifest.clone());
        Ok(v)
    }

    /// Writes every file into `dir` (an empty folder the caller made, which it deletes on
    /// error): each created new, checked for size and sha256 while written, and fsynced, as
    /// is every folder; then requires the archive to end.
    pub fn unpack_into(&mut self, dir: &Path) -> Result<(), TrustError> {
        let manifest = self
            .header
            .take()
            .ok_or_else(|| TrustError::malformed("model bundle reader use", "read_header first"))?;
        let mut dirs: Vec<PathBuf> = vec![dir.to_path_buf()];
        for f in &manifest.files {
            let expected = f.path.as_str();
            let size = match self.block(expected)? {
                Block::End => {
                    return Err(TrustError::MissingEntry {
                        name: expected.into(),
                    })
                }
                Block::Entry { name, size } if name == expected => size,
                Block::Entry { name, .. } if manifest.file(&name).is_some() => {
                    return Err(TrustError::Reordered {
                        entry: name,
                        expected: expected.into(),
                    })
                }
                Block::Entry { name, .. } => {
                    return Err(TrustError::UnexpectedEntry {
                        expected: expected.into(),
                        found: name,
                    })
                }
            };
            if size != f.size {
                return Err(TrustError::SizeMismatch {
                    artifact: expected.into(),
                    expected: f.size,
                    actual: size,
                });
            }
            let target = dir.join(expected);
            if let Some(parent) = target.parent() {
                if !dirs.iter().any(|d| d == parent) {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| TrustError::io(format!("creating {}", parent.display()), e))?;
                    dirs.push(parent.to_path_buf());
                }
            }
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&target)
                .map_err(|e| TrustError::io(format!("creating {}", target.display()), e))?;
            let mut w = HashingWriter::new(file);
            let copied = io::copy(&mut (&mut self.inner).take(size), &mut w)
                .map_err(|e| TrustError::io(format!("reading bundle entry {expected}"), e))?;
            if copied < size {
                return Err(TrustError::Truncated {
                    entry: expected.into(),
                });
            }
            let (file, sha256, _) = w.finish();
            if sha256 != f.sha256 {
                return Err(TrustError::HashMismatch {
                    artifact: expected.into(),
                    expected: f.sha256.to_string(),
                    actual: sha256.to_string(),
                });
            }
            file.sync_all()
                .map_err(|e| TrustError::io(format!("syncing {}", target.display()), e))?;
            self.skip(ustar::padding(size), expected)?;
        }
        // Deepest first, so each folder's entry is durable in its parent after its own files.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in &dirs {
            sync_dir(d)?;
        }
        self.expect_end()
    }

    fn block(&mut self, context: &str) -> Result<Block, TrustError> {
        let mut block = [0u8; BLOCK];
        let mut filled = 0;
        while filled < BLOCK {
            match self.inner.read(&mut block[filled..]) {
                Ok(0) => {
                    return Err(TrustError::Truncated {
                        entry: format!("model bundle (at {context})"),
                    })
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(TrustError::io(
                        format!("reading the model bundle (at {context})"),
                        e,
                    ))
                }
            }
        }
        ustar::parse_relative(&block)
    }

    fn small_entry(&mut self, name: &str, limit: u64) -> Result<Vec<u8>, TrustError> {
        let size = match self.block(name)? {
            Block::Entry { name: found, size } if found == name => size,
            Block::Entry { name: found, .. } => {
                return Err(TrustError::UnexpectedEntry {
                    expected: name.into(),
                    found,
                })
            }
            Block::End => return Err(TrustError::MissingEntry { name: name.into() }),
        };
        if size > limit {
            return Err(TrustError::Oversized {
                entry: name.into(),
                limit,
            });
        }
        let mut data = Vec::new();
        (&mut self.inner)
            .take(size)
            .read_to_end(&mut data)
            .map_err(|e| TrustError::io(format!("reading bundle entry {name}"), e))?;
        if (data.len() as u64) < size {
            return Err(TrustError::Truncated { entry: name.into() });
        }
        self.skip(ustar::padding(size), name)?;
        Ok(data)
    }

    fn skip(&mut self, n: u64, entry: &str) -> Result<(), TrustError> {
        let got = io::copy(&mut (&mut self.inner).take(n), &mut io::sink())
            .map_err(|e| TrustError::io(format!("reading bundle entry {entry}"), e))?;
        if got < n {
            return Err(TrustError::Truncated {
                entry: entry.into(),
            });
        }
        Ok(())
    }

    fn expect_end(&mut self) -> Result<(), TrustError> {
        for _ in 0..2 {
            if let Block::Entry { name, .. } = self.block("the end-of-archive marker")? {
                return Err(TrustError::UnexpectedEntry {
                    expected: "end of bundle".into(),
                    found: name,
                });
            }
        }
        let mut rest = Vec::new();
        (&mut self.inner)
            .take(MAX_TRAILING_ZEROS + 1)
            .read_to_end(&mut rest)
            .map_err(|e| TrustError::io("reading the end of the model bundle", e))?;
        if rest.len() as u64 > MAX_TRAILING_ZEROS || rest.iter().any(|b| *b != 0) {
            return Err(TrustError::UnexpectedEntry {
                expected: "end of bundle".into(),
                found: "data after the end-of-archive marker".into(),
            });
        }
        Ok(())
    }
}

/// fsync a folder, so the entries made in it survive a power cut.
pub fn sync_dir(dir: &Path) -> Result<(), TrustError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| TrustError::io(format!("syncing folder {}", dir.display()), e))
}
