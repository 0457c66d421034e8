//! Where frames come from: a [`FrameSource`] is one open stream, a [`Connector`] opens one
//! for a camera. The camera threads depend on these traits only; [`gst`] (feature
//! `gstreamer`) is the real implementation, RTSP over TCP decoded by GStreamer.

use std::time::Duration;

use aperture_vision::Frame;

/// One open stream of RGB8 frames. Dropping it closes the stream.
pub trait FrameSource: Send {
    /// The next frame, waiting at most `timeout`: `Ok(None)` when none came in time, an error
    /// when the stream failed or ended (the source is then done).
    fn pull(&mut self, timeout: Duration) -> Result<Option<Frame>, String>;
}

/// Opens a camera's stream.
pub trait Connector: Send + Sync {
    /// Open the stream at `url`, its frames scaled to `width` x `height`.
    fn open(&self, url: &str, width: u32, height: u32) -> Result<Box<dyn FrameSource>, String>;
}

#[cfg(feature = "gstreamer")]
pub mod gst {
    //! RTSP over TCP, H.264, decoded by GStreamer into RGB8 frames of a fixed size:
    //!
    //! ```text
    //! rtspsrc protocols=tcp latency=L ! rtph264depay ! avdec_h264 ! videoconvert ! videoscale
    //!   ! video/x-raw,format=RGB,width=W,height=H ! appsink max-buffers=1 drop=true
    //! ```
    //!
    //! The appsink keeps only the newest frame (a slow consumer skips frames, never queues
    //! them); errors and the end of the stream are read from the pipeline's bus at each pull.

    use std::time::Duration;

    use aperture_vision::Frame;
    use gstreamer as gst;
    use gstreamer::prelude::*;
    use gstreamer_app as gst_app;

    use super::{Connector, FrameSource};

    /// Opens RTSP streams through GStreamer.
    #[derive(Debug, Clone)]
    pub struct Rtsp {
        /// rtspsrc's jitter buffer, in milliseconds.
        pub latency_ms: u32,
    }

    impl Default for Rtsp {
        fn default() -> Self {
            Rtsp { latency_ms: 200 }
        }
    }

    /// Initialise GStreamer (once per process; later calls do nothing).
    pub fn init() -> Result<(), String> {
        gst::init().map_err(|e| format!("initialising GStreamer: {e}"))
    }

    /// An open pipeline.
    pub struct GstSource {
        pipeline: gst::Pipeline,
        sink: gst_app::AppSink,
        bus: gst::Bus,
        url: String,
        width: u32,
        height: u32,
    }

    impl std::fmt::Debug for GstSource {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("GstSource")
                .field("url", &self.url)
                .finish_non_exhaustive()
        }
    }

    impl Connector for Rtsp {
        fn open(&self, url: &str, width: u32, height: u32) -> Result<Box<dyn FrameSource>, String> {
            Ok(Box::new(GstSource::open(
                url,
                width,
                height,
                self.latency_ms,
            )?))
        }
    }

    impl GstSource {
        /// Build the pipeline for `url` and start it. Connecting happens in GStreamer's
        /// threads: a camera that cannot be reached shows as an error at a later pull.
        pub fn open(url: &str, width: u32, height: u32, latency_ms: u32) -> Result<Self, String> {
            init()?;
            // The URL is set as a property, never spliced into the pipeline's text.
            let text = format!(
                "rtspsrc name=src protocols=tcp latency={latency_ms} ! rtph264depay ! \
                 avdec_h264 ! videoconvert ! videoscale ! \
                 video/x-raw,format=RGB,width={width},height={height} ! \
                 appsink name=sink max-buffers=1 drop=true sync=false"
            );
            let missing = "(install gstreamer1.0-plugins-base, -good and -libav)";
            let pipeline = gst::parse::launch(&text)
                .map_err(|e| format!("building the GStreamer pipeline for {url}: {e} {missing}"))?
                .downcast::<gst::Pipeline>()
                .map_err(|_| format!("the GStreamer pipeline for {url} is not a pipeline"))?;
            let src = pipeline
                .by_name("src")
                .ok_or_else(|| format!("the pipeline for {url} has no rtspsrc"))?;
            src.set_property("location", url);
            let sink = pipeline
                .by_name("sink")
                .ok_or_else(|| format!("the pipeline for {url} has no appsink"))?
                .downcast::<gst_app::AppSink>()
                .map_err(|_| format!("the pipeline for {url}: its sink is not an appsink"))?;
            let bus = pipeline
                .bus()
                .ok_or_else(|| format!("the pipeline for {url} has no bus"))?;
            let source = GstSource {
                pipeline,
                sink,
                bus,
                url: url.to_string(),
                width,
                height,
            };
            source
                .pipeline
                .set_state(gst::State::Playing)
                .map_err(|e| format!("starting the stream {url}: {e}"))?;
            Ok(source)
        }

        /// An error or the end of the stream, if the bus has one. Every other message is
        /// read and dropped too, or they would pile up on the bus for as long as it streams.
        fn bus_failure(&self) -> Option<String> {
            while let Some(msg) = self.bus.pop() {
                match msg.view() {
                    gst::MessageView::Error(e) => {
                        let from = msg
                            .src()
                            .map(|s| s.path_string().to_string())
                            .unwrap_or_default();
                        return Some(format!(
                            "stream {}: {} ({from}; {})",
                            self.url,
                            e.error(),
                            e.debug().map(|d| d.to_string()).unwrap_or_default()
                        ));
                    }
                    gst::MessageView::Eos(_) => {
                        return Some(format!("stream {}: end of stream", self.url))
                    }
                    _ => {}
                }
            }
            None
        }

        fn frame(&self, sample: &gst::Sample) -> Result<Frame, String> {
            let buffer = sample
                .buffer()
                .ok_or_else(|| format!("stream {}: a sample without a buffer", self.url))?;
            let map = buffer
                .map_readable()
                .map_err(|e| format!("stream {}: mapping a frame: {e}", self.url))?;
            let (w, h) = (self.width as usize, self.height as usize);
            let row = w * 3;
            // GStreamer pads RGB rows to 4 bytes by default.
            let stride = row.div_ceil(4) * 4;
            let bytes = map.as_slice();
            let rgb = if bytes.len() == row * h {
                bytes.to_vec()
            } else if bytes.len() >= stride * (h - 1) + row {
                let mut rgb = Vec::with_capacity(row * h);
                for y in 0..h {
                    rgb.extend_from_slice(&bytes[y * stride..y * stride + row]);
                }
                rgb
            } else {
                return Err(format!(
                    "stream {}: a {}x{} RGB frame of {} bytes",
                    self.url,
                    w,
                    h,
                    bytes.len()
                ));
            };
            Frame::new(self.width, self.height, rgb)
                .map_err(|e| format!("stream {}: {e}", self.url))
        }
    }

    impl FrameSource for GstSource {
        fn pull(&mut self, timeout: Duration) -> Result<Option<Frame>, String> {
            if let Some(e) = self.bus_failure() {
                return Err(e);
            }
            let timeout = gst::ClockTime::from_nseconds(timeout.as_nanos() as u64);
            match self.sink.try_pull_sample(timeout) {
                Some(sample) => self.frame(&sample).map(Some),
                None => match self.bus_failure() {
                    Some(e) => Err(e),
                    None if self.sink.is_eos() => {
                        Err(format!("stream {}: end of stream", self.url))
                    }
                    None => Ok(None),
                },
            }
        }
    }

    impl Drop for GstSource {
        fn drop(&mut self) {
            let _ = self.pipeline.set_state(gst::State::Null);
        }
    }
}
