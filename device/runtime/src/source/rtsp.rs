//! RTSP over TCP, H.264, decoded into RGB8 frames of a fixed size, in Rust:
//!
//! ```text
//! retina (RTSP/RTP, interleaved on the RTSP connection) -> access units, Annex B, with SPS and
//!   PPS before each key frame -> OpenH264 (decode) -> yuv::Scaler (scale, convert) -> newest frame
//! ```
//!
//! Each open stream has a thread of its own, running a single-threaded tokio runtime for
//! retina (the only async code of the device: RTSP needs its keep-alives answered while frames
//! flow) and decoding every access unit as it arrives, as a decoder must: a P frame needs the
//! frames before it. Only the newest converted frame is kept; a slow consumer skips frames,
//! never queues them. A failure or the end of the stream is kept too and returned by the next
//! pull, after which the source is done.
//!
//! Why not GStreamer any more: its RTSP source, depayloader and libav decoder brought 290 MiB of
//! libraries into every slot image (libavcodec's codec closure, libavfilter's voices, GTK bits of
//! -good's dependencies), 54% of the image's files, for the one codec cameras send; see
//! ARCHITECTURE.md, "Slot and bundle compression". retina is the RTSP client of Moonfire NVR,
//! written for real IP cameras' quirks; OpenH264 is Cisco's decoder, compiled from the source
//! the `openh264` crate carries (BSD-2), so nothing is loaded at run time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use aperture_vision::Frame;
use futures::StreamExt;
use openh264::decoder::Decoder;
use openh264::formats::YUVSource;
use retina::client::{
    Credentials, PlayOptions, Session, SessionOptions, SetupOptions, TcpTransportOptions, Transport,
};
use retina::codec::{CodecItem, FrameFormat};
use url::Url;

use super::yuv::{Matrix, Picture, Scaler};
use super::{Connector, FrameSource};

/// Access units in a row that fail to decode before the stream is given up (and opened
/// again by the camera thread): about 5 s of a 10 fps camera. One bad unit (a lost packet)
/// is concealed by the decoder and skipped.
const MAX_BAD_UNITS: u32 = 50;

/// Opens RTSP streams over TCP.
#[derive(Debug, Clone, Default)]
pub struct Rtsp;

impl Connector for Rtsp {
    fn open(&self, url: &str, width: u32, height: u32) -> Result<Box<dyn FrameSource>, String> {
        Ok(Box::new(RtspSource::open(url, width, height)?))
    }
}

/// A camera URL split into what retina connects to and the credentials it answers a
/// challenge with; `shown` is the URL without its password, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The URL without user and password.
    pub url: Url,
    /// The user and password of the URL, if it had any.
    pub credentials: Option<Credentials>,
    /// The URL as messages show it: any password replaced by `***`.
    pub shown: String,
}

impl Address {
    /// Parse `url`: `rtsp://[user[:password]@]host[:port]/path`.
    pub fn parse(url: &str) -> Result<Address, String> {
        let mut parsed = Url::parse(url).map_err(|e| {
            format!(
                "camera URL {:?}: {e} (expected rtsp://host[:port]/path)",
                redact(url)
            )
        })?;
        let mut shown_url = parsed.clone();
        if shown_url.password().is_some() {
            let _ = shown_url.set_password(Some("***"));
        }
        let shown = shown_url.to_string();
        if parsed.scheme() != "rtsp" {
            return Err(format!(
                "camera URL {shown}: the scheme is {:?}; cameras are read over RTSP \
                 (rtsp://host[:port]/path)",
                parsed.scheme()
            ));
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(format!("camera URL {shown}: it names no host"));
        }
        let credentials = if parsed.username().is_empty() {
            None
        } else {
            // Percent-decoding only: in a URL's user part `+` is a plus, not a space.
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            Some(Credentials {
                username: decode(parsed.username()),
                password: decode(parsed.password().unwrap_or("")),
            })
        };
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        Ok(Address {
            url: parsed,
            credentials,
            shown,
        })
    }
}

/// `url` with anything between `://` and `@` hidden, for a URL too broken to parse.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(a)) if a > s => format!("{}://***@{}", &url[..s], &url[a + 1..]),
        _ => url.to_string(),
    }
}

/// What the stream's thread hands to [`RtspSource::pull`]: the newest picture, decoded but
/// not yet scaled or converted (the camera's thread does that for the frames it keeps).
#[derive(Default)]
struct Latest {
    picture: Option<Decoded>,
    failed: Option<String>,
}

#[derive(Default)]
struct Shared {
    latest: Mutex<Latest>,
    changed: Condvar,
    /// Set when the source is dropped. The stream's loop looks at it after every frame:
    /// while the connection holds more data than the decoder keeps up with (always, on a slow
    /// CPU), reading never waits, so the task does not return to the `select!` that also
    /// watches the stop signal until tokio's budget of 128 reads runs out, 128 frames later:
    /// under emulation that held a stop for longer than systemd's 90 s.
    stopping: AtomicBool,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut Latest)) {
        f(&mut self.latest.lock().unwrap_or_else(PoisonError::into_inner));
        self.changed.notify_all();
    }
}

/// An open stream; dropping it stops its thread and closes the connection.
pub struct RtspSource {
    shown: String,
    converter: Converter,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RtspSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtspSource")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

impl RtspSource {
    /// Start streaming `url`, frames scaled to `width` x `height`. Connecting happens on the
    /// stream's thread: a camera that cannot be reached shows as an error at a later pull.
    pub fn open(url: &str, width: u32, height: u32) -> Result<Self, String> {
        let address = Address::parse(url)?;
        if width == 0 || height == 0 {
            return Err(format!(
                "stream {}: a frame size of {width}x{height}",
                address.shown
            ));
        }
        let shown = address.shown.clone();
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let to_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("rtsp-stream".into())
            .spawn(move || {
                let shown = address.shown.clone();
                let result = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(async {
                        tokio::select! {
                            r = stream(address, (width as usize, height as usize), &to_thread) => r,
                            _ = stopped => Ok(()),
                        }
                    }),
                    Err(e) => Err(format!("stream {shown}: starting its I/O: {e}")),
                };
                to_thread.update(|l| {
                    l.failed = Some(match result {
                        Ok(()) => format!("stream {shown}: end of stream"),
                        Err(e) => e,
                    })
                });
            })
            .map_err(|e| format!("stream {shown}: starting its thread: {e}"))?;
        Ok(RtspSource {
            shown,
            converter: Converter::new((width as usize, height as usize)),
            shared,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// Connect, play the first H.264 video stream and decode it until it ends or fails.
async fn stream(address: Address, size: (usize, usize), shared: &Shared) -> Result<(), String> {
    let shown = &address.shown;
    let options = SessionOptions::default()
        .creds(address.credentials)
        .user_agent(format!("aperture-runtime/{}", env!("CARGO_PKG_VERSION")));
    let mut session = Session::describe(address.url, options)
        .await
        .map_err(|e| format!("stream {shown}: DESCRIBE: {e}"))?;
    let found: Vec<String> = session
        .streams()
        .iter()
        .map(|s| format!("{} {}", s.media(), s.encoding_name()))
        .collect();
    let index = session
        .streams()
        .iter()
        .position(|s| s.media() == "video" && s.encoding_name().eq_ignore_ascii_case("h264"))
        .ok_or_else(|| {
            format!(
                "stream {shown}: no H.264 video among its streams ({}); set the camera to \
                 send H.264",
                found.join(", ")
            )
        })?;
    session
        .setup(
            index,
            SetupOptions::default()
                .transport(Transport::Tcp(TcpTransportOptions::default()))
                .frame_format(FrameFormat::SIMPLE),
        )
        .await
        .map_err(|e| format!("stream {shown}: SETUP: {e}"))?;
    let mut session = session
        .play(PlayOptions::default())
        .await
        .map_err(|e| format!("stream {shown}: PLAY: {e}"))?
        .demuxed()
        .map_err(|e| format!("stream {shown}: {e}"))?;
    let mut h264 = H264::new(size).map_err(|e| format!("stream {shown}: {e}"))?;
    while let Some(item) = session.next().await {
        let item = item.map_err(|e| format!("stream {shown}: {e}"))?;
        if let CodecItem::VideoFrame(unit) = item {
            if let Some(picture) = h264
                .decode_picture(unit.data())
                .map_err(|e| format!("stream {shown}: {e}"))?
            {
                shared.update(|l| l.picture = Some(picture));
            }
        }
        if shared.stopping.load(Ordering::Relaxed) {
            break;
        }
    }
    Ok(())
}

/// A decoded picture copied out of the decoder (planes packed: rows `width` and
/// `width.div_ceil(2)` bytes long), not yet scaled or converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    width: usize,
    height: usize,
    planes: [Vec<u8>; 3],
}

impl Decoded {
    /// Copy `picture`'s samples out of the decoder's buffers.
    fn copy(picture: &Picture<'_>) -> Result<Decoded, String> {
        picture.check()?;
        let sizes = picture.plane_sizes();
        let planes = std::array::from_fn(|p| {
            let (w, h) = sizes[p];
            let mut plane = Vec::with_capacity(w * h);
            for row in picture.planes[p].chunks(picture.strides[p]).take(h) {
                plane.extend_from_slice(&row[..w]);
            }
            plane
        });
        Ok(Decoded {
            width: picture.width,
            height: picture.height,
            planes,
        })
    }

    fn picture(&self) -> Picture<'_> {
        let chroma = self.width.div_ceil(2);
        Picture {
            width: self.width,
            height: self.height,
            planes: [&self.planes[0], &self.planes[1], &self.planes[2]],
            strides: [self.width, chroma, chroma],
        }
    }
}

/// Scales and converts decoded pictures to RGB8 frames of one size.
#[derive(Debug)]
pub struct Converter {
    size: (usize, usize),
    scaler: Option<Scaler>,
}

impl Converter {
    /// Frames `size` (width, height).
    pub fn new(size: (usize, usize)) -> Converter {
        Converter { size, scaler: None }
    }

    /// `decoded` as a frame.
    pub fn frame(&mut self, decoded: &Decoded) -> Result<Frame, String> {
        let (w, h) = (decoded.width, decoded.height);
        if self.scaler.as_ref().map(Scaler::source) != Some((w, h)) {
            self.scaler = Some(Scaler::new((w, h), self.size, Matrix::for_height(h)));
        }
        let scaler = self.scaler.as_ref().expect("made above");
        let rgb = scaler.rgb(&decoded.picture())?;
        Frame::new(self.size.0 as u32, self.size.1 as u32, rgb).map_err(|e| e.to_string())
    }
}

/// An H.264 decoder putting out RGB8 frames of one size.
pub struct H264 {
    decoder: Decoder,
    converter: Converter,
    bad: u32,
}

impl std::fmt::Debug for H264 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H264")
            .field("size", &self.converter.size)
            .field("bad", &self.bad)
            .finish_non_exhaustive()
    }
}

impl H264 {
    /// A decoder whose frames are `size` (width, height).
    pub fn new(size: (usize, usize)) -> Result<H264, String> {
        Ok(H264 {
            decoder: Decoder::new().map_err(|e| format!("starting the H.264 decoder: {e}"))?,
            converter: Converter::new(size),
            bad: 0,
        })
    }

    /// Decode one access unit (Annex B; parameter sets before key frames): the picture it
    /// completes as a frame, if any. A unit that does not decode is skipped; the error comes
    /// after [`MAX_BAD_UNITS`] of them in a row.
    pub fn decode(&mut self, unit: &[u8]) -> Result<Option<Frame>, String> {
        match self.decode_picture(unit)? {
            Some(decoded) => self.converter.frame(&decoded).map(Some),
            None => Ok(None),
        }
    }

    /// [`decode`](Self::decode) without the scaling and conversion: the picture as decoded.
    pub fn decode_picture(&mut self, unit: &[u8]) -> Result<Option<Decoded>, String> {
        let picture = match self.decoder.decode(unit) {
            Ok(Some(p)) => p,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.bad += 1;
                if self.bad >= MAX_BAD_UNITS {
                    return Err(format!(
                        "{} H.264 access units in a row did not decode; the last: {e}",
                        self.bad
                    ));
                }
                return Ok(None);
            }
        };
        self.bad = 0;
        let (w, h) = picture.dimensions();
        let (sy, su, sv) = picture.strides();
        let picture = Picture {
            width: w,
            height: h,
            planes: [picture.y(), picture.u(), picture.v()],
            strides: [sy, su, sv],
        };
        Decoded::copy(&picture).map(Some)
    }
}

impl RtspSource {
    /// The next picture, waiting at most `timeout`.
    fn next_picture(&mut self, timeout: Duration) -> Result<Option<Decoded>, String> {
        let deadline = Instant::now() + timeout;
        let mut latest = self
            .shared
            .latest
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(picture) = latest.picture.take() {
                return Ok(Some(picture));
            }
            if let Some(e) = &latest.failed {
                return Err(e.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            latest = self
                .shared
                .changed
                .wait_timeout(latest, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl FrameSource for RtspSource {
    fn pull(&mut self, timeout: Duration) -> Result<Option<Frame>, String> {
        match self.next_picture(timeout)? {
            Some(picture) => self.converter.frame(&picture).map(Some),
            None => Ok(None),
        }
    }

    fn skip(&mut self, timeout: Duration) -> Result<bool, String> {
        Ok(self.next_picture(timeout)?.is_some())
    }
}

impl Drop for RtspSource {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openh264::encoder::Encoder;
    use openh264::formats::{RgbSliceU8, YUVBuffer};

    #[test]
    fn camera_urls_give_their_credentials_to_retina_and_never_show_the_password() {
        let a = Address::parse("rtsp://admin:s%40c+ret@192.0.2.10:554/stream1").unwrap();
        assert_eq!(a.url.as_str(), "rtsp://192.0.2.10:554/stream1");
        assert_eq!(
            a.credentials,
            Some(Credentials {
                username: "admin".into(),
                password: "s@c+ret".into()
            })
        );
        assert_eq!(a.shown, "rtsp://admin:***@192.0.2.10:554/stream1");
        let a = Address::parse("rtsp://cam.local/h264").unwrap();
        assert_eq!(a.credentials, None);
        assert_eq!(a.shown, "rtsp://cam.local/h264");

        let e = Address::parse("http://admin:pw@192.0.2.10/").unwrap_err();
        assert!(e.contains("scheme is \"http\"") && !e.contains("pw"), "{e}");
        let e = Address::parse("rtsp://admin:pw@[::1/").unwrap_err();
        assert!(e.contains("rtsp://***@[::1/") && !e.contains("pw"), "{e}");
        assert!(Address::parse("rtsp:///path").is_err());
        assert!(RtspSource::open("rtsp://192.0.2.10/x", 0, 416).is_err());
    }

    /// A `w` x `h` RGB picture: four coloured quadrants.
    fn quadrants(w: usize, h: usize) -> Vec<u8> {
        let mut rgb = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                rgb.extend(match (x < w / 2, y < h / 2) {
                    (true, true) => [200, 40, 40],
                    (false, true) => [40, 200, 40],
                    (true, false) => [40, 40, 200],
                    (false, false) => [220, 220, 220],
                });
            }
        }
        rgb
    }

    #[test]
    fn an_encoded_stream_decodes_to_frames_of_the_asked_size_with_its_colours() {
        let (w, h) = (320, 240);
        let source = quadrants(w, h);
        let yuv = YUVBuffer::from_rgb_source(RgbSliceU8::new(&source, (w, h)));
        let mut encoder = Encoder::new().unwrap();
        let mut decoder = H264::new((160, 160)).unwrap();
        let mut frames = 0;
        for _ in 0..5 {
            let unit = encoder.encode(&yuv).unwrap().to_vec();
            let Some(frame) = decoder.decode(&unit).unwrap() else {
                continue;
            };
            frames += 1;
            assert_eq!((frame.width(), frame.height()), (160, 160));
            // The centre of each quadrant keeps its colour (lossy coding: within 12).
            for ((x, y), want) in [
                ((40, 40), [200, 40, 40]),
                ((120, 40), [40, 200, 40]),
                ((40, 120), [40, 40, 200]),
                ((120, 120), [220, 220, 220]),
            ] {
                let at = (y * 160 + x) * 3;
                let got = &frame.rgb()[at..at + 3];
                for (g, w) in got.iter().zip(want) {
                    assert!(g.abs_diff(w) <= 12, "({x}, {y}): {got:?}, want {want:?}");
                }
            }
        }
        assert!(frames >= 4, "{frames} frames decoded of 5");
    }

    #[test]
    fn garbage_is_skipped_until_too_much_of_it_comes_in_a_row() {
        let junk = [0, 0, 0, 1, 0x65, 0xff, 0x00, 0x13, 0x37];
        let rgb = quadrants(64, 64);
        let yuv = YUVBuffer::from_rgb_source(RgbSliceU8::new(&rgb, (64, 64)));
        let good = Encoder::new().unwrap().encode(&yuv).unwrap().to_vec();
        let mut decoder = H264::new((16, 16)).unwrap();
        for round in 0..2 {
            for i in 1..MAX_BAD_UNITS {
                assert!(
                    decoder.decode(&junk).unwrap().is_none(),
                    "round {round}, unit {i}"
                );
            }
            if round == 0 {
                // A good unit in between starts the count again.
                assert!(decoder.decode(&good).unwrap().is_some());
            }
        }
        let e = decoder.decode(&junk).unwrap_err();
        assert!(
            e.contains("50 H.264 access units in a row did not decode"),
            "{e}"
        );
    }
}
