//! The appliance's inference runtime (issue 17), first slice: a trained detector run through
//! ONNX Runtime on RGB8 frames.
//!
//! * [`Detector`]: a frame in, [`Detection`]s out. The pipeline (camera threads, outputs,
//!   health) will depend on this trait only.
//! * [`OnnxRuntime`]: the ONNX Runtime library, loaded at run time from a path (the `ort`
//!   crate's `load-dynamic`: nothing is downloaded or linked when this crate is built), once per
//!   process.
//! * [`OrtDetector`]: a model described by its manifest (aperture-vision), verified against the
//!   manifest's sha256, in an ONNX Runtime session on the CPU; preprocessing and decoding are
//!   aperture-vision's.
//!
//! * [`camera`]: a camera connection's state machine (connecting, streaming, stalled,
//!   backoff), pure.
//! * [`source`]: the [`source::FrameSource`] and [`source::Connector`] traits, the conversion of
//!   decoded pictures to frames ([`source::yuv`]); with the feature `rtsp`, their RTSP and
//!   H.264 implementation (`source::rtsp`).
//! * [`service`]: the threads (one per camera, one inference, one output), the metrics file and
//!   the golden self-test; [`output`]: the Unix socket and the rolling file; [`config`]: the
//!   config file.
//! * [`store`]: the model store (signed model bundles in the data partition, switched
//!   atomically); [`models`]: which model the runtime starts with, switching back past one
//!   whose self-test fails; [`model_cli`]: `aperture-runtime model install|status|rollback`;
//!   [`detections_cli`]: `aperture-runtime detections`, the socket's reader.
//! * [`watchdog`]: systemd's watchdog variables and the service loop's pace.
//! * `cli` (feature `rtsp`): the `aperture-runtime` program (`aperture-device`'s feature
//!   `runtime`).
//!
//! Not yet here: CUDA and TensorRT providers, the image's unit.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub mod camera;
#[cfg(feature = "rtsp")]
pub mod cli;
pub mod config;
pub mod detections_cli;
pub mod model_cli;
pub mod models;
pub mod output;
pub mod service;
pub mod source;
pub mod store;
pub mod watchdog;

use aperture_vision::decode::{DecodeError, NanoDet};
use aperture_vision::manifest::ManifestError;
use aperture_vision::{preprocess::preprocess, Detection, Frame, Manifest, OutputTensor, Outputs};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::{Tensor, ValueType};
use thiserror::Error;

/// The ONNX Runtime release this runtime is built and tested against (the library of the
/// official `onnxruntime` 1.31.1 wheel; `ort` 2.0.0-rc.15 refuses anything older than 1.22).
pub const ONNXRUNTIME_VERSION: &str = "1.31.1";

/// What went wrong loading or running a model. Every message names the file at fault.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The ONNX Runtime library is not at the path given.
    #[error(
        "the ONNX Runtime library {path} does not exist: install libonnxruntime.so.{ONNXRUNTIME_VERSION} \
         (from the official onnxruntime {ONNXRUNTIME_VERSION} wheel; `cargo xtask test` puts it \
         under /opt/aperture-tools) and give its path"
    )]
    LibraryMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The library exists but cannot be loaded or set up.
    #[error(
        "loading the ONNX Runtime library {path}: {err} (it must be libonnxruntime.so.{ONNXRUNTIME_VERSION} \
         from the official onnxruntime {ONNXRUNTIME_VERSION} wheel, for this machine's architecture)"
    )]
    Library {
        /// The library.
        path: PathBuf,
        /// Why, in ort's words.
        err: String,
    },
    /// This process already loaded another library (ONNX Runtime's API is process-wide).
    #[error(
        "this process already loaded the ONNX Runtime library {loaded}; it cannot also load \
         {wanted}: give one path to every detector"
    )]
    OtherLibrary {
        /// The one loaded.
        loaded: PathBuf,
        /// The one asked for.
        wanted: PathBuf,
    },
    /// The manifest or the model file is wrong.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// ONNX Runtime refused the model.
    #[error("loading model {model} into ONNX Runtime: {err}")]
    Session {
        /// The model file.
        model: PathBuf,
        /// Why, in ONNX Runtime's words.
        err: String,
    },
    /// The model does not have the input or outputs its manifest describes.
    #[error("model {model} does not match its manifest {manifest}: {what}")]
    Mismatch {
        /// The model file.
        model: PathBuf,
        /// The manifest.
        manifest: PathBuf,
        /// What differs.
        what: String,
    },
    /// A run failed.
    #[error("running model {model}: {err}")]
    Run {
        /// The model file.
        model: PathBuf,
        /// Why, in ONNX Runtime's words.
        err: String,
    },
    /// The outputs could not be decoded.
    #[error("decoding the outputs of model {model}: {err}")]
    Decode {
        /// The model file.
        model: PathBuf,
        /// Why.
        #[source]
        err: DecodeError,
    },
}

/// A detector: a frame in, detections in the frame's pixels out, strongest first.
pub trait Detector {
    /// Detect objects in `frame`.
    fn detect(&mut self, frame: &Frame) -> Result<Vec<Detection>, Error>;
}

/// The ONNX Runtime library of this process and its environment.
pub struct OnnxRuntime {
    path: PathBuf,
    env: ort::environment::Environment,
}

impl std::fmt::Debug for OnnxRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxRuntime")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

static RUNTIME: OnceLock<OnnxRuntime> = OnceLock::new();
static LOADING: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl OnnxRuntime {
    /// Load the library at `path` (`libonnxruntime.so.1.X.Y`) and make the process's
    /// environment, or return the one already made from the same path.
    pub fn load(path: &Path) -> Result<&'static OnnxRuntime, Error> {
        // dlopen would also search the library path for a bare name; we load only the file named.
        if !path.is_file() {
            return Err(Error::LibraryMissing {
                path: path.to_path_buf(),
            });
        }
        let _one_at_a_time = LOADING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rt) = RUNTIME.get() {
            return if rt.path == path {
                Ok(rt)
            } else {
                Err(Error::OtherLibrary {
                    loaded: rt.path.clone(),
                    wanted: path.to_path_buf(),
                })
            };
        }
        let library = |err: String| Error::Library {
            path: path.to_path_buf(),
            err,
        };
        let env = ort::init_from(path)
            .map_err(|e| library(e.to_string()))?
            .with_name("aperture-runtime")
            .with_telemetry(false)
            .build()
            .map_err(|e| library(e.to_string()))?;
        Ok(RUNTIME.get_or_init(|| OnnxRuntime {
            path: path.to_path_buf(),
            env,
        }))
    }

    /// The library's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// How a session runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Threads inside one operator (ONNX Runtime's intra-op pool).
    pub intra_threads: usize,
    /// Accelerators to try, most wanted first; the CPU is always the last resort.
    pub providers: Vec<Provider>,
    /// Where TensorRT keeps the engines it builds (the first start on a device builds them,
    /// which takes minutes; later starts load them). None: no cache.
    pub engine_cache: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            intra_threads: 1,
            providers: Vec::new(),
            engine_cache: None,
        }
    }
}

/// An ONNX Runtime execution provider the runtime can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// NVIDIA TensorRT (Jetson: from the JetPack tree's ONNX Runtime build).
    Tensorrt,
    /// NVIDIA CUDA.
    Cuda,
}

impl Provider {
    /// Its name in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Tensorrt => "tensorrt",
            Provider::Cuda => "cuda",
        }
    }
}

/// A model in an ONNX Runtime session, with its manifest's preprocessing and decoder.
pub struct OrtDetector {
    session: Session,
    manifest: Manifest,
    decoder: NanoDet,
    model: PathBuf,
    provider: &'static str,
    fallback: Option<String>,
}

impl OrtDetector {
    /// The execution provider the session runs on: `tensorrt`, `cuda` or `cpu`.
    pub fn execution_provider(&self) -> &'static str {
        self.provider
    }

    /// Why it runs on the CPU although accelerators were asked for.
    pub fn fallback(&self) -> Option<&str> {
        self.fallback.as_deref()
    }
}

impl std::fmt::Debug for OrtDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtDetector")
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl OrtDetector {
    /// Verify the manifest's model file against its sha256, load it into a session and check
    /// that its input and outputs are the ones the manifest describes.
    pub fn new(
        runtime: &OnnxRuntime,
        manifest: &Manifest,
        options: &Options,
    ) -> Result<OrtDetector, Error> {
        let model = manifest.model_path();
        let bytes = manifest.read_model()?;
        let session_err = |e: ort::Error| Error::Session {
            model: model.clone(),
            err: e.to_string(),
        };
        // The first wanted accelerator that registers; none: the CPU, said loudly.
        let mut provider = "cpu";
        let mut fallback = None;
        let mut failures = Vec::new();
        let mut builder = Session::builder(&runtime.env).map_err(session_err)?;
        for p in &options.providers {
            let ep = match p {
                Provider::Tensorrt => {
                    let mut t = ort::ep::TensorRT::default();
                    if let Some(dir) = &options.engine_cache {
                        t = t
                            .with_engine_cache(true)
                            .with_engine_cache_path(dir.display());
                    }
                    t.build().error_on_failure()
                }
                Provider::Cuda => ort::ep::CUDA::default().build().error_on_failure(),
            };
            match builder.with_execution_providers([ep]) {
                Ok(b) => {
                    builder = b;
                    provider = p.name();
                    break;
                }
                Err(e) => {
                    failures.push(format!("{}: {e}", p.name()));
                    builder = e.recover();
                }
            }
        }
        if !options.providers.is_empty() && provider == "cpu" {
            let why = format!(
                "none of the execution providers asked for ({}) is available in {} ({}); \
                 running on the CPU",
                options
                    .providers
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>()
                    .join(", "),
                runtime.path().display(),
                failures.join("; ")
            );
            let bar = "!".repeat(72);
            eprintln!("aperture-runtime: {bar}\naperture-runtime: FALLBACK TO CPU: {why}\naperture-runtime: {bar}");
            fallback = Some(why);
        }
        let session = builder
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| session_err(e.into()))?
            .with_intra_threads(options.intra_threads)
            .map_err(|e| session_err(e.into()))?
            // ONNX Runtime's memory pattern plans one block per input shape ahead of a run: for
            // NanoDet-m at 416 x 416 it held about 20 MB more at the same CPU time per frame
            // (measured with `bench runtime`'s peer, ONNX Runtime 1.31.1), and a camera's
            // frames never change shape.
            .with_memory_pattern(false)
            .map_err(|e| session_err(e.into()))?
            .commit_from_memory(&bytes)
            .map_err(session_err)?;
        let detector = OrtDetector {
            session,
            decoder: NanoDet::new(manifest),
            manifest: manifest.clone(),
            model,
            provider,
            fallback,
        };
        detector.check_signature()?;
        Ok(detector)
    }

    fn mismatch(&self, what: String) -> Error {
        Error::Mismatch {
            model: self.model.clone(),
            manifest: self.manifest.path().to_path_buf(),
            what,
        }
    }

    /// The session's input and outputs against the manifest.
    fn check_signature(&self) -> Result<(), Error> {
        let want = &self.manifest.input;
        let inputs: Vec<&str> = self.session.inputs().iter().map(|i| i.name()).collect();
        let [input] = self.session.inputs() else {
            return Err(self.mismatch(format!("the model has inputs {inputs:?}, not one")));
        };
        if input.name() != want.name {
            return Err(self.mismatch(format!(
                "its input is {:?}, the manifest says {:?}",
                input.name(),
                want.name
            )));
        }
        match input.dtype() {
            ValueType::Tensor {
                ty: ort::value::TensorElementType::Float32,
                shape,
                ..
            } if shape
                .iter()
                .zip(want.shape)
                .all(|(&got, want)| got == -1 || got == want as i64)
                && shape.len() == 4 => {}
            other => {
                return Err(self.mismatch(format!(
                    "its input {:?} is {other:?}, the manifest says float32 {:?}",
                    want.name, want.shape
                )))
            }
        }
        let outputs: Vec<&str> = self.session.outputs().iter().map(|o| o.name()).collect();
        for (name, _) in self.decoder.expected_outputs() {
            if !outputs.contains(&name.as_str()) {
                return Err(
                    self.mismatch(format!("it has no output {name:?} (it has {outputs:?})"))
                );
            }
        }
        Ok(())
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Run the model on an input tensor (the manifest's input shape) and copy every output out.
    pub fn infer(&mut self, input: Vec<f32>) -> Result<Outputs, Error> {
        let run_err = |model: &Path, e: ort::Error| Error::Run {
            model: model.to_path_buf(),
            err: e.to_string(),
        };
        let shape: Vec<i64> = self
            .manifest
            .input
            .shape
            .iter()
            .map(|&d| d as i64)
            .collect();
        let tensor = Tensor::from_array((shape, input.into_boxed_slice()))
            .map_err(|e| run_err(&self.model, e))?;
        let name = self.manifest.input.name.clone();
        let results = self
            .session
            .run(ort::inputs![name.as_str() => tensor])
            .map_err(|e| run_err(&self.model, e))?;
        let mut outputs = Outputs::new();
        for (name, value) in results.iter() {
            let (shape, data) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| run_err(&self.model, e))?;
            outputs.insert(
                name.to_string(),
                OutputTensor {
                    shape: shape.iter().map(|&d| d.max(0) as usize).collect(),
                    data: data.to_vec(),
                },
            );
        }
        Ok(outputs)
    }
}

impl Detector for OrtDetector {
    fn detect(&mut self, frame: &Frame) -> Result<Vec<Detection>, Error> {
        let input = preprocess(frame, &self.manifest.input);
        let outputs = self.infer(input)?;
        self.decoder
            .decode(&outputs, frame.width(), frame.height())
            .map_err(|err| Error::Decode {
                model: self.model.clone(),
                err,
            })
    }
}
