//! The model store: signed model bundles installed into the data partition
//! (`/var/lib/aperture-runtime/models`, the unit's StateDirectory), switched atomically, switched
//! back when the runtime's self-test on one fails.
//!
//! ```text
//! <store>/
//!   <digest>/            one installed model; <digest> = sha256 of its canonical model.json
//!     model.json         the signed model manifest, as read from the bundle
//!     model.sig          its signature (the OS bundles' key chain)
//!     model/             the model folder: manifest.toml, the model file, golden/
//!   current -> <digest>  the model the runtime loads (absent: the image's built-in model)
//!   previous -> <digest> the one before (what a failed self-test switches back to)
//!   rejected.json        models whose loading or self-test failed: never switched to again
//!   .incoming-<pid>/     an install in progress (a leftover is deleted by the next install)
//! ```
//!
//! An install writes everything into `.incoming-<pid>/` and fsyncs it, renames it to
//! `<digest>/`, then points `previous` and `current` with a new symlink renamed over the old
//! one, fsyncing the store folder after each step. A power cut at any point leaves `current`
//! naming either the old model or the new, complete one (rename(2) is atomic, and `<digest>/`
//! exists only complete).

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use aperture_trust::digest::sha256_file;
use aperture_trust::keys::PublicKey;
use aperture_trust::model::{sync_dir, verify_model_manifest, ModelBundleReader, ModelManifest};
use aperture_trust::signing::VERIFIED_WHEN_WRITTEN;
use aperture_trust::TrustError;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The symlink naming the model in use.
pub const CURRENT: &str = "current";
/// The symlink naming the model before it.
pub const PREVIOUS: &str = "previous";
/// The record of rejected models.
pub const REJECTED: &str = "rejected.json";
/// The model folder inside an installed model's folder.
pub const MODEL_DIR: &str = "model";
/// Rejections kept in `rejected.json` (the oldest are forgotten).
const MAX_REJECTIONS: usize = 64;

/// What went wrong with the store or a bundle. Every message names the bundle or file and the
/// fix; after any error `current` is what it was.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The bundle failed verification (signature, key, hashes, archive).
    #[error("model bundle {bundle} was refused, the current model is unchanged: {err}")]
    Bundle {
        /// The bundle file.
        bundle: PathBuf,
        /// Why.
        err: TrustError,
    },
    /// The bundle's model does not match its own manifest.toml.
    #[error(
        "model bundle {bundle} was refused, the current model is unchanged: {why}; fix the \
         model folder and bundle it again (aperture model bundle)"
    )]
    Model {
        /// The bundle file.
        bundle: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The bundle is older than the installed model.
    #[error(
        "model bundle {bundle} is {name} {offered}, older than the installed {installed}: \
         downgrades are refused; bundle the model with a newer --version, or pass \
         --insecure-allow-downgrade to install it anyway"
    )]
    Downgrade {
        /// The bundle file.
        bundle: PathBuf,
        /// The model's name.
        name: String,
        /// Its version.
        offered: String,
        /// The installed model's version.
        installed: String,
    },
    /// Same version as the installed model but other content.
    #[error(
        "model bundle {bundle} is version {version}, the installed model's version, with other \
         content: bundle it with a newer --version (or pass --insecure-allow-downgrade)"
    )]
    NotNewer {
        /// The bundle file.
        bundle: PathBuf,
        /// The version both have.
        version: String,
    },
    /// This very model was rejected by the runtime before.
    #[error(
        "model bundle {bundle} holds model {digest}, which the runtime rejected before: \
         {reason}; fix the model and bundle it with a new version"
    )]
    Rejected {
        /// The bundle file.
        bundle: PathBuf,
        /// The model's digest.
        digest: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Nothing to roll back to.
    #[error("the model store {store} has no installed model to roll back: {why}")]
    NothingToRollBack {
        /// The store.
        store: PathBuf,
        /// What it holds.
        why: String,
    },
    /// An installed model is damaged or not what it says.
    #[error("installed model {dir}: {why}")]
    Installed {
        /// Its folder.
        dir: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A file operation failed.
    #[error("{what}: {err}")]
    Io {
        /// What was being done, naming the file.
        what: String,
        /// Why.
        err: std::io::Error,
    },
    /// The install was stopped at a fault point (tests of power cuts only).
    #[error("install interrupted after {0:?} (fault injection)")]
    Interrupted(InstallStep),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let what = what.into();
    move |err| StoreError::Io { what, err }
}

/// A point of an install where a test can stop it as a power cut would (nothing cleaned up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstallStep {
    /// The model is unpacked and synced in `.incoming-<pid>/`.
    Unpacked,
    /// `.incoming-<pid>/` was renamed to `<digest>/`.
    Renamed,
    /// `previous` names the old model; `current` is not switched yet.
    PreviousSwitched,
}

/// How to install.
#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    /// The time to check key expiry at (unix seconds).
    pub now: u64,
    /// Install even a version older than (or equal to) the installed one.
    pub insecure_allow_downgrade: bool,
    /// Stop there, as a power cut would (tests).
    pub stop_after: Option<InstallStep>,
}

/// An installed model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Installed {
    /// sha256 of its canonical model.json (its folder's name).
    pub digest: String,
    /// Its name.
    pub name: String,
    /// Its bundle's version.
    pub version: String,
    /// Its folder, `<store>/<digest>`.
    pub dir: PathBuf,
}

impl Installed {
    /// Its model's `manifest.toml`.
    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join(MODEL_DIR).join("manifest.toml")
    }
}

/// A model the runtime refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Its digest.
    pub digest: String,
    /// Its name, if it could be read.
    pub name: String,
    /// Its version, if it could be read.
    pub version: String,
    /// Why.
    pub reason: String,
    /// When (unix milliseconds).
    pub unix_ms: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RejectedFile {
    rejected: Vec<Rejection>,
}

/// What `status` reports.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The store.
    pub store: PathBuf,
    /// The model in use (none: the image's built-in model).
    pub current: Option<Installed>,
    /// The one before.
    pub previous: Option<Installed>,
    /// Rejected models, oldest first.
    pub rejected: Vec<Rejection>,
}

/// A model store in a folder.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Store {
    /// The store in `dir` (made by the first install).
    pub fn new(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    /// Its folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The digest a link names, if the link exists.
    fn link(&self, name: &str) -> Result<Option<String>, StoreError> {
        let path = self.dir.join(name);
        match std::fs::read_link(&path) {
            Ok(target) => {
                let t = target.to_string_lossy().into_owned();
                if is_digest(&t) {
                    Ok(Some(t))
                } else {
                    Err(StoreError::Installed {
                        dir: path,
                        why: format!(
                            "points to {t:?}, not a model digest; remove it to use the built-in model"
                        ),
                    })
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(format!("reading the link {}", path.display()))(e)),
        }
    }

    /// The digest `current` names.
    pub fn current_digest(&self) -> Result<Option<String>, StoreError> {
        self.link(CURRENT)
    }

    /// The installed model `digest` (its model.json read, not verified).
    pub fn installed(&self, digest: &str) -> Result<Installed, StoreError> {
        let dir = self.dir.join(digest);
        let path = dir.join("model.json");
        let text = std::fs::read(&path).map_err(|e| StoreError::Installed {
            dir: dir.clone(),
            why: format!("reading {}: {e}", path.display()),
        })?;
        let m: ModelManifest =
            serde_json::from_slice(&text).map_err(|e| StoreError::Installed {
                dir: dir.clone(),
                why: format!("{}: {e}", path.display()),
            })?;
        Ok(Installed {
            digest: digest.into(),
            name: m.name.to_string(),
            version: m.version.to_string(),
            dir,
        })
    }

    /// The model in use, if any.
    pub fn current(&self) -> Result<Option<Installed>, StoreError> {
        self.current_digest()?
            .map(|d| self.installed(&d))
            .transpose()
    }

    /// The store's state.
    pub fn status(&self) -> Result<Status, StoreError> {
        let get = |name| -> Result<Option<Installed>, StoreError> {
            self.link(name)?.map(|d| self.installed(&d)).transpose()
        };
        Ok(Status {
            store: self.dir.clone(),
            current: get(CURRENT)?,
            previous: get(PREVIOUS)?,
            rejected: self.rejections()?,
        })
    }

    /// Rejected models, oldest first.
    pub fn rejections(&self) -> Result<Vec<Rejection>, StoreError> {
        let path = self.dir.join(REJECTED);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice::<RejectedFile>(&b)
                .map(|f| f.rejected)
                .map_err(|e| StoreError::Installed {
                    dir: path,
                    why: format!("{e}; delete it to forget the rejected models"),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io(format!("reading {}", path.display()))(e)),
        }
    }

    /// Verify an installed model again: its signature chain against `root` (as when it was
    /// installed; key expiry is not judged by today's clock), that it is the model its folder
    /// names, and every file's size and sha256.
    pub fn verify(&self, model: &Installed, root: &PublicKey) -> Result<(), StoreError> {
        let bad = |why: String| StoreError::Installed {
            dir: model.dir.clone(),
            why,
        };
        let read = |name: &str| {
            std::fs::read(model.dir.join(name)).map_err(|e| bad(format!("reading {name}: {e}")))
        };
        let v = verify_model_manifest(
            &read("model.json")?,
            &read("model.sig")?,
            root,
            VERIFIED_WHEN_WRITTEN,
        )
        .map_err(|e| bad(e.to_string()))?;
        if v.digest().as_str() != model.digest {
            return Err(bad(format!(
                "its model.json is model {}, not the one its folder names",
                v.digest()
            )));
        }
        for f in &v.manifest().files {
            let path = model.dir.join(MODEL_DIR).join(f.path.as_str());
            let meta =
                std::fs::symlink_metadata(&path).map_err(|e| bad(format!("{}: {e}", f.path)))?;
            if !meta.file_type().is_file() {
                return Err(bad(format!("{} is not a regular file", f.path)));
            }
            let (sha, size) = sha256_file(&path).map_err(|e| bad(e.to_string()))?;
            if sha != f.sha256 || size != f.size {
                return Err(bad(format!(
                    "{} has changed since it was installed (sha256 {sha}, {size} bytes; \
                     signed: {}, {} bytes)",
                    f.path, f.sha256, f.size
                )));
            }
        }
        Ok(())
    }

    /// Verify the bundle at `bundle` against `root`, unpack it, and make it current (the
    /// current one becoming previous). Returns the model, and whether it was already current
    /// (then nothing changes).
    pub fn install(
        &self,
        bundle: &Path,
        root: &PublicKey,
        opts: &InstallOptions,
    ) -> Result<(Installed, bool), StoreError> {
        let refused = |err: TrustError| StoreError::Bundle {
            bundle: bundle.to_path_buf(),
            err,
        };
        let file = File::open(bundle)
            .map_err(io(format!("opening the model bundle {}", bundle.display())))?;
        let mut reader = ModelBundleReader::new(BufReader::new(file), root, opts.now);
        let verified = reader.read_header().map_err(refused)?;
        let digest = verified.digest().to_string();
        let m = verified.manifest();
        if let Some(r) = self.rejections()?.into_iter().find(|r| r.digest == digest) {
            return Err(StoreError::Rejected {
                bundle: bundle.to_path_buf(),
                digest,
                reason: r.reason,
            });
        }
        let current = self.current()?;
        if let Some(cur) = &current {
            if cur.digest == digest {
                return Ok((cur.clone(), true));
            }
            let installed: semver::Version =
                cur.version.parse().map_err(|e| StoreError::Installed {
                    dir: cur.dir.clone(),
                    why: format!("version {:?}: {e}", cur.version),
                })?;
            if !opts.insecure_allow_downgrade {
                if m.version < installed {
                    return Err(StoreError::Downgrade {
                        bundle: bundle.to_path_buf(),
                        name: m.name.to_string(),
                        offered: m.version.to_string(),
                        installed: cur.version.clone(),
                    });
                }
                if m.version == installed {
                    return Err(StoreError::NotNewer {
                        bundle: bundle.to_path_buf(),
                        version: cur.version.clone(),
                    });
                }
            }
        }
        if !self.dir.is_dir() {
            std::fs::create_dir_all(&self.dir).map_err(io(format!(
                "creating the model store {}",
                self.dir.display()
            )))?;
            // Made by root inside the unit's StateDirectory: give it to that folder's owner
            // (the runtime's user), which must be able to switch back.
            if let Some(parent) = self.dir.parent() {
                chown_like(&self.dir, parent)?;
            }
        }
        self.remove_leftovers();
        let tmp = self.dir.join(format!(".incoming-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let unpacked = self.unpack(&mut reader, &verified, bundle, &tmp);
        if let Err(e) = unpacked {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        self.stop(opts, InstallStep::Unpacked)?;
        let dir = self.dir.join(&digest);
        if dir.exists() {
            // Complete already (a folder gets its digest name only complete): keep it.
            let _ = std::fs::remove_dir_all(&tmp);
        } else {
            std::fs::rename(&tmp, &dir).map_err(io(format!(
                "renaming {} to {}",
                tmp.display(),
                dir.display()
            )))?;
            self.sync()?;
        }
        self.stop(opts, InstallStep::Renamed)?;
        if let Some(cur) = &current {
            self.point(PREVIOUS, &cur.digest)?;
        }
        self.stop(opts, InstallStep::PreviousSwitched)?;
        self.point(CURRENT, &digest)?;
        self.collect_garbage();
        Ok((self.installed(&digest)?, false))
    }

    fn stop(&self, opts: &InstallOptions, step: InstallStep) -> Result<(), StoreError> {
        if opts.stop_after == Some(step) {
            return Err(StoreError::Interrupted(step));
        }
        Ok(())
    }

    /// Unpack into `tmp`, check the model against its manifest.toml, fsync, chown to the
    /// store's owner (the runtime's user, which must be able to switch back).
    fn unpack<R: std::io::Read>(
        &self,
        reader: &mut ModelBundleReader<R>,
        verified: &aperture_trust::model::VerifiedModel,
        bundle: &Path,
        tmp: &Path,
    ) -> Result<(), StoreError> {
        let model_dir = tmp.join(MODEL_DIR);
        std::fs::create_dir_all(&model_dir)
            .map_err(io(format!("creating {}", model_dir.display())))?;
        for (name, bytes) in [
            ("model.json", verified.manifest_json()),
            ("model.sig", verified.sig_json()),
        ] {
            let path = tmp.join(name);
            std::fs::write(&path, bytes)
                .and_then(|()| File::open(&path)?.sync_all())
                .map_err(io(format!("writing {}", path.display())))?;
        }
        reader
            .unpack_into(&model_dir)
            .map_err(|err| StoreError::Bundle {
                bundle: bundle.to_path_buf(),
                err,
            })?;
        check_model(&model_dir, verified.manifest()).map_err(|why| StoreError::Model {
            bundle: bundle.to_path_buf(),
            why,
        })?;
        sync_dir(tmp).map_err(|err| StoreError::Bundle {
            bundle: bundle.to_path_buf(),
            err,
        })?;
        chown_like(tmp, &self.dir)
    }

    /// Point the link `name` at `digest`: a new symlink renamed over the old one, then the
    /// store folder synced.
    fn point(&self, name: &str, digest: &str) -> Result<(), StoreError> {
        let link = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.new"));
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(digest, &tmp)
            .and_then(|()| std::fs::rename(&tmp, &link))
            .map_err(io(format!("pointing {} at {digest}", link.display())))?;
        self.sync()
    }

    fn sync(&self) -> Result<(), StoreError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(format!("syncing {}", self.dir.display())))
    }

    /// Delete `.incoming-*` folders an interrupted install left (best effort).
    fn remove_leftovers(&self) {
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(".incoming-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Delete installed models neither `current` nor `previous` names (best effort).
    fn collect_garbage(&self) {
        let keep: Vec<String> = [CURRENT, PREVIOUS]
            .iter()
            .filter_map(|l| self.link(l).ok().flatten())
            .collect();
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if is_digest(&name) && !keep.contains(&name) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Record that the runtime refused the current model (`reason`), and switch back: to
    /// `previous` when there is one that was not rejected, else to the built-in model (no
    /// `current`). Returns the new current digest.
    pub fn reject_current(&self, reason: &str) -> Result<Option<String>, StoreError> {
        let Some(digest) = self.current_digest()? else {
            return Ok(None);
        };
        let (name, version) = match self.installed(&digest) {
            Ok(i) => (i.name, i.version),
            Err(_) => ("?".into(), "?".into()),
        };
        let mut all = self.rejections().unwrap_or_default();
        if !all.iter().any(|r| r.digest == digest) {
            all.push(Rejection {
                digest: digest.clone(),
                name,
                version,
                reason: reason.into(),
                unix_ms: unix_ms(),
            });
        }
        let drop_n = all.len().saturating_sub(MAX_REJECTIONS);
        all.drain(..drop_n);
        self.write_rejections(&all)?;
        let previous = self.link(PREVIOUS)?;
        match previous {
            Some(p) if p != digest && !all.iter().any(|r| r.digest == p) => {
                // One rename: `current` now names the previous model and `previous` is gone.
                let (from, to) = (self.dir.join(PREVIOUS), self.dir.join(CURRENT));
                std::fs::rename(&from, &to).map_err(io(format!(
                    "renaming {} to {}",
                    from.display(),
                    to.display()
                )))?;
                self.sync()?;
                Ok(Some(p))
            }
            _ => {
                let path = self.dir.join(CURRENT);
                std::fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
                self.sync()?;
                Ok(None)
            }
        }
    }

    fn write_rejections(&self, all: &[Rejection]) -> Result<(), StoreError> {
        let path = self.dir.join(REJECTED);
        let tmp = self.dir.join(format!(".{REJECTED}.new"));
        let mut json = serde_json::to_vec_pretty(&RejectedFile {
            rejected: all.to_vec(),
        })
        .unwrap_or_default();
        json.push(b'\n');
        std::fs::write(&tmp, &json)
            .and_then(|()| File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(io(format!("writing {}", path.display())))?;
        self.sync()
    }

    /// Switch back by hand: `current` to `previous` and `previous` to the old current; with
    /// no `previous`, to the built-in model (the old current kept as `previous`). Returns the
    /// new current digest.
    pub fn rollback(&self) -> Result<Option<String>, StoreError> {
        let (cur, prev) = (self.link(CURRENT)?, self.link(PREVIOUS)?);
        match (cur, prev) {
            (Some(c), Some(p)) => {
                self.point(CURRENT, &p)?;
                self.point(PREVIOUS, &c)?;
                Ok(Some(p))
            }
            (Some(c), None) => {
                self.point(PREVIOUS, &c)?;
                let path = self.dir.join(CURRENT);
                std::fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
                self.sync()?;
                Ok(None)
            }
            (None, _) => Err(StoreError::NothingToRollBack {
                store: self.dir.clone(),
                why: "the built-in model is in use already".into(),
            }),
        }
    }
}

/// The model folder's manifest.toml: present, naming this model, pinning the sha256 of its
/// model file (which must be in the bundle), with a golden reference for the self-test.
fn check_model(dir: &Path, bundle: &ModelManifest) -> Result<(), String> {
    let manifest = aperture_vision::Manifest::load(&dir.join("manifest.toml"))
        .map_err(|e| format!("its manifest.toml: {e}"))?;
    if manifest.model.name != bundle.name.as_str() {
        return Err(format!(
            "its manifest.toml names model {:?}, the bundle {:?}",
            manifest.model.name,
            bundle.name.as_str()
        ));
    }
    if bundle.file(&manifest.model.file).is_none() {
        return Err(format!(
            "its manifest.toml's model file {:?} is not in the bundle",
            manifest.model.file
        ));
    }
    if bundle.file("golden/reference.json").is_none() {
        return Err("it has no golden/reference.json for the runtime's self-test".into());
    }
    manifest.read_model().map_err(|e| e.to_string())?;
    Ok(())
}

/// Give everything under `tree` the owner of `like` (the store folder, owned by the runtime's
/// user), when they differ: root installs, the runtime must be able to switch back.
fn chown_like(tree: &Path, like: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(like).map_err(io(format!("reading {}", like.display())))?;
    let (uid, gid) = (owner.uid(), owner.gid());
    let mut stack = vec![tree.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).map_err(io(format!("reading {}", p.display())))?;
        if meta.uid() != uid || meta.gid() != gid {
            std::os::unix::fs::lchown(&p, Some(uid), Some(gid))
                .map_err(io(format!("giving {} to the store's owner", p.display())))?;
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).map_err(io(format!("listing {}", p.display())))? {
                stack.push(e.map_err(io(format!("listing {}", p.display())))?.path());
            }
        }
    }
    Ok(())
}
