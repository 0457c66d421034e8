//! Where frames come from: a [`FrameSource`] is one open stream, a [`Connector`] opens one
//! for a camera. The camera threads depend on these traits only; [`rtsp`] (feature `rtsp`) is
//! the real implementation, RTSP over TCP with H.264 decoded by OpenH264, and [`yuv`] turns
//! decoded pictures into the model's RGB frames.

use std::time::Duration;

use aperture_vision::Frame;

/// One open stream of RGB8 frames. Dropping it closes the stream.
pub trait FrameSource: Send {
    /// The next frame, waiting at most `timeout`: `Ok(None)` when none came in time, an error
    /// when the stream failed or ended (the source is then done).
    fn pull(&mut self, timeout: Duration) -> Result<Option<Frame>, String>;

    /// As [`pull`](Self::pull) when nothing would take the frame (the inference queue is
    /// full): `Ok(true)` when a frame came and was thrown away. A source may skip the work of
    /// making it (scaling, converting); the default pulls it.
    fn skip(&mut self, timeout: Duration) -> Result<bool, String> {
        Ok(self.pull(timeout)?.is_some())
    }
}

/// Opens a camera's stream.
pub trait Connector: Send + Sync {
    /// Open the stream at `url`, its frames scaled to `width` x `height`.
    fn open(&self, url: &str, width: u32, height: u32) -> Result<Box<dyn FrameSource>, String>;
}

pub mod yuv;

#[cfg(feature = "rtsp")]
pub mod rtsp;
