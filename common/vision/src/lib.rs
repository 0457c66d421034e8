//! The appliance's vision contract, in pure Rust (no inference library here): what a model
//! expects and what its answer means.
//!
//! * [`manifest`]: the model manifest (`models/<name>/manifest.toml`): the model file and its
//!   sha256, where it came from, its input tensor, its decoder and its class names.
//! * [`frame`]: RGB8 frames, and reading binary PPM files (the golden frames).
//! * [`preprocess`]: a frame to the model's input tensor (resize, channel order, normalisation,
//!   layout), as the manifest describes it.
//! * [`decode`]: a detector's raw output tensors to [`Detection`]s in frame pixels (NanoDet's
//!   GFL head), and per-class non-maximum suppression.
//!
//! The inference itself is `aperture-runtime`'s (device/runtime), behind its `Detector` trait.

pub mod decode;
pub mod frame;
pub mod manifest;
pub mod preprocess;

pub use decode::{Detection, OutputTensor, Outputs};
pub use frame::Frame;
pub use manifest::Manifest;
