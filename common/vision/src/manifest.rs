//! The model manifest (`manifest.toml` beside the model file): the model's sha256, where it came
//! from, its input tensor and how to fill it, its decoder and its class names.
//!
//! Unknown keys are errors (a misspelt `score_treshold` must not silently fall back to a
//! default), and so is every value the runtime could not honour. The model file is read only
//! through [`Manifest::read_model`], which returns its bytes once their sha256 matches the pin,
//! so the bytes checked are the bytes the inference library gets.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// What is wrong with a manifest or the model it names. Every message names the file and says
/// what to do.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The manifest or the model cannot be read.
    #[error("reading {path}: {err}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// The manifest is not valid TOML for this format (syntax, unknown key, wrong type).
    #[error(
        "model manifest {path} is invalid: {err}\n(the format is common/vision/src/manifest.rs; \
         remove or correct the key named above)"
    )]
    Parse {
        /// The manifest.
        path: PathBuf,
        /// The parser's message, with line and column.
        err: String,
    },
    /// A value the runtime cannot honour.
    #[error("model manifest {path}: {what}")]
    Invalid {
        /// The manifest.
        path: PathBuf,
        /// Which key, and what it must be.
        what: String,
    },
    /// The model file is not the one the manifest pins.
    #[error(
        "model file {model} has sha256 {actual}, but its manifest {manifest} pins {expected}: \
         the file is not the model the manifest describes. Restore the model (import.sh beside \
         the manifest reproduces it) or, if the model was replaced on purpose, review it and \
         put its sha256 in the manifest"
    )]
    Sha256Mismatch {
        /// The model file.
        model: PathBuf,
        /// The manifest.
        manifest: PathBuf,
        /// The pinned sha256.
        expected: String,
        /// The file's sha256.
        actual: String,
    },
}

/// A parsed and validated model manifest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The model file and its identity.
    pub model: Model,
    /// Where the model came from.
    pub source: Source,
    /// The model's input tensor.
    pub input: Input,
    /// How to read the model's outputs.
    pub decoder: Decoder,
    /// The class names.
    pub classes: Classes,
    /// The manifest's own path (set by [`Manifest::load`]).
    #[serde(skip)]
    path: PathBuf,
}

/// `[model]`: the file and its identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// A short name (`nanodet-m`), for logs and metrics.
    pub name: String,
    /// The ONNX file, a plain name in the manifest's folder.
    pub file: String,
    /// Its sha256, lower-case hex.
    pub sha256: String,
    /// The licences of the weights and of the package they came in.
    pub licence: String,
}

/// `[source]`: the registry package the weights came from, and how they were converted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// `npm` or `pypi`.
    pub registry: String,
    /// The package's name.
    pub package: String,
    /// Its exact version.
    pub version: String,
    /// sha256 of the package file the registry serves.
    pub tarball_sha256: String,
    /// The model's path inside the package.
    pub path: String,
    /// The converter and its versions.
    pub converter: String,
}

/// The order of a tensor's dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// Batch, channel, height, width.
    Nchw,
    /// Batch, height, width, channel.
    Nhwc,
}

/// The order of the colour channels in the tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColourOrder {
    /// Red, green, blue.
    Rgb,
    /// Blue, green, red (models trained with OpenCV).
    Bgr,
}

/// How a frame is brought to the input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resize {
    /// Stretched (no letterbox), bilinear with half-pixel centres and clamped edges, no
    /// antialiasing.
    Bilinear,
}

/// `[input]`: the input tensor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// The tensor's name in the model.
    pub name: String,
    /// Its shape, in the order of `layout`; batch 1, 3 channels.
    pub shape: [usize; 4],
    /// The order of its dimensions.
    pub layout: Layout,
    /// The order of its colour channels.
    pub colour_order: ColourOrder,
    /// How frames are resized.
    pub resize: Resize,
    /// Per tensor channel, on 0-255 values: the value is `(v - mean) / std`.
    pub mean: [f32; 3],
    /// See `mean`.
    pub std: [f32; 3],
}

impl Input {
    /// Width and height of the input image.
    pub fn size(&self) -> (usize, usize) {
        match self.layout {
            Layout::Nchw => (self.shape[3], self.shape[2]),
            Layout::Nhwc => (self.shape[2], self.shape[1]),
        }
    }

    /// The number of colour channels.
    pub fn channels(&self) -> usize {
        match self.layout {
            Layout::Nchw => self.shape[1],
            Layout::Nhwc => self.shape[3],
        }
    }
}

/// The decoders this runtime knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecoderKind {
    /// NanoDet's GFL head ([`crate::decode::NanoDet`]).
    Nanodet,
}

/// `[decoder]`: how to turn the outputs into detections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decoder {
    /// Which decoder.
    pub kind: DecoderKind,
    /// The largest distance bin: each box side is a distribution over `reg_max + 1` bins.
    pub reg_max: usize,
    /// Class scores above this are candidates.
    pub score_threshold: f32,
    /// Of two candidates of one class overlapping more than this (IoU), the weaker is dropped.
    pub nms_iou: f32,
    /// At most this many detections per frame, the strongest.
    pub max_detections: usize,
    /// The output levels.
    pub levels: Vec<Level>,
}

/// One output level of a multi-scale head.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Level {
    /// Input pixels per grid cell.
    pub stride: usize,
    /// The output holding this level's class scores.
    pub scores: String,
    /// The output holding this level's box distributions.
    pub boxes: String,
}

/// `[classes]`: the class names, in output order.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Classes {
    /// The names.
    pub names: Vec<String>,
}

impl Manifest {
    /// Read, parse and validate the manifest at `path` (the model file is not read yet).
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|err| ManifestError::Read {
            path: path.to_path_buf(),
            err,
        })?;
        Manifest::parse(&text, path)
    }

    /// Parse and validate manifest text; `path` names it in errors and locates the model file.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let mut m: Manifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            path: path.to_path_buf(),
            err: e.to_string().trim_end().to_string(),
        })?;
        m.path = path.to_path_buf();
        m.validate()?;
        Ok(m)
    }

    fn invalid(&self, what: impl Into<String>) -> ManifestError {
        ManifestError::Invalid {
            path: self.path.clone(),
            what: what.into(),
        }
    }

    fn validate(&self) -> Result<(), ManifestError> {
        let is_sha256 = |s: &str| {
            s.len() == 64
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !is_sha256(&self.model.sha256) {
            return Err(self.invalid(format!(
                "[model] sha256 = {:?} is not 64 lower-case hex digits",
                self.model.sha256
            )));
        }
        if !is_sha256(&self.source.tarball_sha256) {
            return Err(self.invalid(format!(
                "[source] tarball_sha256 = {:?} is not 64 lower-case hex digits",
                self.source.tarball_sha256
            )));
        }
        let f = &self.model.file;
        if f.is_empty() || f.contains('/') || f == "." || f == ".." {
            return Err(self.invalid(format!(
                "[model] file = {f:?} must be a plain file name in the manifest's folder"
            )));
        }
        let i = &self.input;
        if i.shape[0] != 1 || i.channels() != 3 {
            return Err(self.invalid(format!(
                "[input] shape = {:?} must have batch 1 and 3 colour channels for layout {:?}",
                i.shape, i.layout
            )));
        }
        let (w, h) = i.size();
        if w == 0 || h == 0 {
            return Err(self.invalid("[input] shape has a zero width or height"));
        }
        if let Some(s) = i.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(self.invalid(format!("[input] std has {s}: each must be above 0")));
        }
        if i.mean.iter().any(|m| !m.is_finite()) {
            return Err(self.invalid("[input] mean must be finite numbers"));
        }
        let d = &self.decoder;
        if d.reg_max == 0 {
            return Err(self.invalid("[decoder] reg_max must be at least 1"));
        }
        for (key, v) in [
            ("score_threshold", d.score_threshold),
            ("nms_iou", d.nms_iou),
        ] {
            if !(v > 0.0 && v < 1.0) {
                return Err(self.invalid(format!("[decoder] {key} = {v} must be between 0 and 1")));
            }
        }
        if d.max_detections == 0 {
            return Err(self.invalid("[decoder] max_detections must be at least 1"));
        }
        if d.levels.is_empty() {
            return Err(self.invalid("[decoder] levels is empty"));
        }
        if let Some(l) = d.levels.iter().find(|l| l.stride == 0) {
            return Err(self.invalid(format!("[decoder] level {:?} has stride 0", l.scores)));
        }
        if self.classes.names.is_empty() {
            return Err(self.invalid("[classes] names is empty"));
        }
        Ok(())
    }

    /// The manifest's own path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model file's path (beside the manifest).
    pub fn model_path(&self) -> PathBuf {
        self.path
            .parent()
            .unwrap_or(Path::new("."))
            .join(&self.model.file)
    }

    /// The model file's bytes, once their sha256 matches the manifest's pin.
    pub fn read_model(&self) -> Result<Vec<u8>, ManifestError> {
        let model = self.model_path();
        let bytes = std::fs::read(&model).map_err(|err| ManifestError::Read {
            path: model.clone(),
            err,
        })?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != self.model.sha256 {
            return Err(ManifestError::Sha256Mismatch {
                model,
                manifest: self.path.clone(),
                expected: self.model.sha256.clone(),
                actual,
            });
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed NanoDet-m manifest.
    fn committed() -> (PathBuf, String) {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/nanodet-m/manifest.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        (path, text)
    }

    #[test]
    fn the_committed_manifest_is_valid() {
        let (path, text) = committed();
        let m = Manifest::parse(&text, &path).unwrap();
        assert_eq!(m.input.size(), (416, 416));
        assert_eq!(m.classes.names.len(), 80);
        assert_eq!(m.classes.names[0], "person");
        assert_eq!(m.decoder.levels.len(), 3);
        assert!(m.model_path().ends_with("nanodet-m/nanodet-m.onnx"));
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_the_file_and_the_key() {
        let (path, text) = committed();
        let text = text.replace("nms_iou = 0.5", "nms_iou = 0.5\nscore_treshold = 0.2");
        let e = Manifest::parse(&text, &path).unwrap_err().to_string();
        assert!(e.contains("manifest.toml"), "{e}");
        assert!(e.contains("unknown field `score_treshold`"), "{e}");
        assert!(e.contains("line"), "{e}");
    }

    #[test]
    fn values_the_runtime_cannot_honour_are_errors() {
        let (path, text) = committed();
        for (from, to, says) in [
            ("std = [57.375", "std = [0.0", "each must be above 0"),
            (
                "score_threshold = 0.35",
                "score_threshold = 1.5",
                "score_threshold = 1.5",
            ),
            (
                "shape = [1, 3, 416, 416]",
                "shape = [1, 4, 416, 416]",
                "3 colour channels",
            ),
            (
                "file = \"nanodet-m.onnx\"",
                "file = \"../x.onnx\"",
                "plain file name",
            ),
            ("sha256 = \"8b32", "sha256 = \"8B32", "64 lower-case hex"),
        ] {
            assert!(text.contains(from), "{from}");
            let e = Manifest::parse(&text.replacen(from, to, 1), &path)
                .unwrap_err()
                .to_string();
            assert!(e.contains(says) && e.contains("manifest.toml"), "{e}");
        }
    }

    #[test]
    fn a_model_that_does_not_match_its_pin_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, text) = committed();
        std::fs::write(dir.path().join("nanodet-m.onnx"), b"not the model").unwrap();
        let path = dir.path().join("manifest.toml");
        std::fs::write(&path, &text).unwrap();
        let m = Manifest::load(&path).unwrap();
        let e = m.read_model().unwrap_err().to_string();
        assert!(
            e.contains("nanodet-m.onnx") && e.contains("manifest.toml"),
            "{e}"
        );
        assert!(
            e.contains(&hex::encode(Sha256::digest(b"not the model"))),
            "{e}"
        );
        assert!(e.contains("import.sh"), "{e}");
        // The right bytes pass.
        let pinned = m.model.sha256.clone();
        let good = text.replace(&pinned, &hex::encode(Sha256::digest(b"not the model")));
        std::fs::write(&path, good).unwrap();
        assert_eq!(
            Manifest::load(&path).unwrap().read_model().unwrap(),
            b"not the model"
        );
    }
}
