//! Which model the runtime starts with: the model store's current model when there is one and
//! it verifies, loads and passes its golden self-test; otherwise, loudly, the store switches
//! back (to `previous`, else to nothing) with the refused model recorded so it is never tried
//! again, and the next candidate is tried, ending with the image's built-in model (`model` in
//! the config), whose self-test must pass or the runtime does not start.

use std::path::{Path, PathBuf};

use aperture_trust::keys::PublicKey;
use aperture_vision::Manifest;

use crate::config::Config;
use crate::service::{self, ModelInfo};
use crate::store::{Installed, Rejection, Store};
use crate::{OnnxRuntime, Options, OrtDetector};

/// The model the runtime started with.
#[derive(Debug)]
pub struct Started<D> {
    /// Its detector, self-tested.
    pub detector: D,
    /// Its manifest.
    pub manifest: Manifest,
    /// Where its manifest is.
    pub manifest_path: PathBuf,
    /// Golden frames its self-test passed on.
    pub frames: usize,
    /// The store's model, or `None` for the built-in one.
    pub store: Option<Installed>,
    /// The newest rejection the store records (from this start or an earlier one).
    pub last_rejection: Option<Rejection>,
}

impl<D> Started<D> {
    /// What the metrics file says of the model.
    pub fn info(&self) -> ModelInfo {
        ModelInfo {
            name: self.manifest.model.name.clone(),
            sha256: self.manifest.model.sha256.clone(),
            execution_provider: "cpu".into(),
            fallback: false,
            source: if self.store.is_some() {
                "store"
            } else {
                "built-in"
            }
            .into(),
            manifest: self.manifest_path.clone(),
            bundle_digest: self.store.as_ref().map(|s| s.digest.clone()),
            bundle_version: self.store.as_ref().map(|s| s.version.clone()),
            last_rejection: self.last_rejection.clone(),
        }
    }
}

/// Load a model with ONNX Runtime and run its golden self-test: what the runtime does with
/// each candidate.
pub fn load_ort(
    ort: &OnnxRuntime,
    manifest_path: &Path,
) -> Result<(OrtDetector, Manifest, usize), String> {
    load_ort_with(ort, manifest_path, usize::MAX, &Options::default())
}

/// [`load_ort`] with the session's `options` (execution providers) and the self-test on the
/// reference's first `frames` frames only ([`service::self_test_first`]).
pub fn load_ort_with(
    ort: &OnnxRuntime,
    manifest_path: &Path,
    frames: usize,
    options: &Options,
) -> Result<(OrtDetector, Manifest, usize), String> {
    let manifest = Manifest::load(manifest_path).map_err(|e| e.to_string())?;
    let mut detector = OrtDetector::new(ort, &manifest, options).map_err(|e| e.to_string())?;
    let frames = service::self_test_first(&mut detector, manifest_path, frames)?;
    Ok((detector, manifest, frames))
}

fn loud(lines: &[String]) {
    let bar = "=".repeat(72);
    eprintln!("aperture-runtime: {bar}");
    for l in lines {
        eprintln!("aperture-runtime: {l}");
    }
    eprintln!("aperture-runtime: {bar}");
}

/// Choose, load and self-test the model (see the module's comment). `load` loads the model of
/// a manifest and self-tests it ([`load_ort`] in the runtime).
pub fn start<D>(
    config: &Config,
    mut load: impl FnMut(&Path) -> Result<(D, Manifest, usize), String>,
) -> Result<Started<D>, String> {
    let mut last_rejection = None;
    if let Some(dir) = &config.models_dir {
        let store = Store::new(dir);
        if let Some(started) = from_store(config, &store, &mut load)? {
            return Ok(started);
        }
        last_rejection = store.rejections().ok().and_then(|r| r.last().cloned());
    }
    let (detector, manifest, frames) = load(&config.model)
        .map_err(|e| format!("the built-in model {}: {e}", config.model.display()))?;
    Ok(Started {
        detector,
        manifest,
        manifest_path: config.model.clone(),
        frames,
        store: None,
        last_rejection,
    })
}

/// The store's current model, switching back past every one that fails; `None`: use the
/// built-in model.
fn from_store<D>(
    config: &Config,
    store: &Store,
    load: &mut impl FnMut(&Path) -> Result<(D, Manifest, usize), String>,
) -> Result<Option<Started<D>>, String> {
    let mut root: Option<PublicKey> = None;
    // Each failure removes one model from `current`'s chain (current, previous), so this ends.
    for _ in 0..4 {
        let digest = match store.current_digest() {
            Ok(Some(d)) => d,
            Ok(None) => return Ok(None),
            Err(e) => {
                loud(&[
                    format!("THE MODEL STORE IS UNUSABLE: {e}"),
                    "running the built-in model".into(),
                ]);
                return Ok(None);
            }
        };
        let root = match &root {
            Some(r) => *r,
            None => {
                let path = config.root_key();
                match PublicKey::load(&path) {
                    Ok(k) => *root.insert(k),
                    Err(e) => {
                        // Not the model's fault: do not reject it, run the built-in one.
                        loud(&[
                            format!(
                                "CANNOT VERIFY THE STORE'S MODEL {digest}: the root key {}: {e}",
                                path.display()
                            ),
                            "running the built-in model".into(),
                        ]);
                        return Ok(None);
                    }
                }
            }
        };
        let rejected = store
            .rejections()
            .unwrap_or_default()
            .into_iter()
            .find(|r| r.digest == digest);
        let tried = match rejected {
            Some(r) => Err(format!("it was rejected before: {}", r.reason)),
            None => try_one(store, &digest, &root, load),
        };
        match tried {
            Ok(started) => {
                eprintln!(
                    "aperture-runtime: model {} {} from the store ({}) passed its self-test",
                    started.manifest.model.name,
                    started
                        .store
                        .as_ref()
                        .map(|s| s.version.as_str())
                        .unwrap_or("?"),
                    digest
                );
                return Ok(Some(Started {
                    last_rejection: store.rejections().ok().and_then(|r| r.last().cloned()),
                    ..started
                }));
            }
            Err(reason) => {
                let name = store
                    .installed(&digest)
                    .map(|i| format!("{} {}", i.name, i.version))
                    .unwrap_or_else(|_| "?".into());
                match store.reject_current(&reason) {
                    Ok(next) => loud(&[
                        format!("MODEL {name} ({digest}) FROM THE STORE FAILED: {reason}"),
                        format!(
                            "switched back to {}; this model is recorded as rejected in {} \
                             and will not be tried again",
                            next.map(|d| format!("the previous model {d}"))
                                .unwrap_or_else(|| "the built-in model".into()),
                            store.dir().join(crate::store::REJECTED).display()
                        ),
                    ]),
                    Err(e) => {
                        loud(&[
                            format!("MODEL {name} ({digest}) FROM THE STORE FAILED: {reason}"),
                            format!("and switching back failed: {e}"),
                            "running the built-in model".into(),
                        ]);
                        return Ok(None);
                    }
                }
            }
        }
    }
    Ok(None)
}

fn try_one<D>(
    store: &Store,
    digest: &str,
    root: &PublicKey,
    load: &mut impl FnMut(&Path) -> Result<(D, Manifest, usize), String>,
) -> Result<Started<D>, String> {
    let installed = store.installed(digest).map_err(|e| e.to_string())?;
    store.verify(&installed, root).map_err(|e| e.to_string())?;
    let path = installed.manifest_path();
    let (detector, manifest, frames) = load(&path)?;
    Ok(Started {
        detector,
        manifest,
        manifest_path: path,
        frames,
        store: Some(installed),
        last_rejection: None,
    })
}
