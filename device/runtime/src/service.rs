//! The running service: one thread per camera, one inference thread, one output thread, and
//! the caller's thread writing the metrics.
//!
//! * A camera thread follows its [`Camera`] machine: open the stream, pull frames, close it
//!   when it stalls, wait out the backoff, open it again. Frames go to the inference thread
//!   through one bounded channel (two places per camera); a full channel drops the frame and
//!   counts it against the camera.
//! * The inference thread runs the one [`Detector`] on each frame as it comes and hands the
//!   detections, as JSON lines, to the output thread through another bounded channel (a full
//!   one counts lost lines, it never waits).
//! * The output thread serves the lines on the Unix socket and appends them to the rolling
//!   file.
//! * The caller's thread rewrites the metrics file every tick (0.5 s, less for a short
//!   watchdog: [`Pace`]) and calls `alive` when every thread has checked in lately (the systemd
//!   watchdog's ping).

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aperture_vision::{Detection, Frame};
use serde::Serialize;

use crate::camera::{Camera, Event, State, Timing};
use crate::config::Config;
use crate::output::{write_atomic, RollingFile, SocketOut};
use crate::source::{Connector, FrameSource};
use crate::watchdog::Pace;
use crate::Detector;

/// How long one pull or wait lasts before the thread looks at its state and the stop flag.
const POLL: Duration = Duration::from_millis(200);
/// Latencies kept for the percentiles.
const LATENCY_WINDOW: usize = 1024;

/// How the service says it is healthy: `alive` (the watchdog's ping) at `pace`.
#[derive(Debug)]
pub struct Health<F: FnMut()> {
    /// The loop's tick and how long a thread may stay silent.
    pub pace: Pace,
    /// Called every tick while every thread checks in.
    pub alive: F,
}

/// The model, as the metrics report it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ModelInfo {
    /// Its short name.
    pub name: String,
    /// The model file's sha256 (verified when it was loaded).
    pub sha256: String,
    /// ONNX Runtime's execution provider (`cpu`).
    pub execution_provider: String,
    /// Whether a wanted accelerator was missing and the CPU is used instead.
    pub fallback: bool,
    /// `store` (a model bundle installed with `aperture-runtime model install`) or
    /// `built-in` (the image's model).
    pub source: String,
    /// Its manifest.toml.
    pub manifest: std::path::PathBuf,
    /// From the store: the bundle's digest (its folder in the store).
    pub bundle_digest: Option<String>,
    /// From the store: the bundle's version.
    pub bundle_version: Option<String>,
    /// The newest model the store refused (its load or self-test failed), if any.
    pub last_rejection: Option<crate::store::Rejection>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A thread's last sign of life.
#[derive(Debug)]
struct Heartbeat {
    name: String,
    at: Mutex<Instant>,
}

impl Heartbeat {
    fn new(name: String) -> Heartbeat {
        Heartbeat {
            name,
            at: Mutex::new(Instant::now()),
        }
    }
    fn beat(&self) {
        *self.at.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
    fn age(&self) -> Duration {
        self.at.lock().unwrap_or_else(|e| e.into_inner()).elapsed()
    }
}

/// One camera's counters and state, as the metrics report them.
#[derive(Debug, Default, Clone, Serialize)]
pub struct CameraReport {
    /// Its name.
    pub name: String,
    /// `connecting`, `streaming` or `stalled`.
    pub state: String,
    /// The machine's exact state (`stalled` shows as `stalled` or `backoff`).
    pub phase: String,
    /// Failures in a row.
    pub failures: u32,
    /// Times it was lost or failed to open.
    pub stalls: u64,
    /// Why it last failed.
    pub last_error: Option<String>,
    /// Frames decoded.
    pub decoded: u64,
    /// Frames run through the model.
    pub inferred: u64,
    /// Frames dropped because the inference thread was busy.
    pub dropped: u64,
    /// Frames the detector failed on (each logged).
    pub failed: u64,
}

#[derive(Debug, Default)]
struct CameraStats {
    decoded: AtomicU64,
    inferred: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    state: Mutex<CameraReport>,
}

/// What every thread shares.
#[derive(Debug)]
struct Shared {
    cameras: Vec<CameraStats>,
    /// Milliseconds from a frame's decoding to its detections, the newest last.
    latencies: Mutex<VecDeque<f64>>,
    lines: AtomicU64,
    lines_dropped: AtomicU64,
    clients: AtomicU64,
    clients_dropped: AtomicU64,
    output_error: Mutex<Option<String>>,
    /// Frames waiting for the inference thread, and how many may wait: while the queue is
    /// full, a camera's thread skips its frames without scaling or converting them (they
    /// would be dropped), and takes the next one once there is room.
    queued: AtomicUsize,
    queue_capacity: usize,
}

/// The metrics file.
#[derive(Debug, Serialize)]
pub struct Metrics {
    /// When written (Unix milliseconds).
    pub updated_unix_ms: u64,
    /// The model.
    pub model: ModelInfo,
    /// Totals over the cameras.
    pub frames: Totals,
    /// Decoding to detections, over the last 1024 frames.
    pub latency_ms: Latency,
    /// Each camera.
    pub cameras: Vec<CameraReport>,
    /// The outputs.
    pub output: OutputReport,
}

/// Frame counts.
#[derive(Debug, Serialize)]
pub struct Totals {
    /// Decoded.
    pub decoded: u64,
    /// Run through the model.
    pub inferred: u64,
    /// Dropped.
    pub dropped: u64,
}

/// Latency percentiles.
#[derive(Debug, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: Option<f64>,
    /// 95th percentile.
    pub p95: Option<f64>,
    /// Frames measured.
    pub samples: usize,
}

/// The outputs' state.
#[derive(Debug, Serialize)]
pub struct OutputReport {
    /// Detection lines written.
    pub lines: u64,
    /// Lines lost because the output thread was behind.
    pub lines_dropped: u64,
    /// Socket clients connected.
    pub clients: u64,
    /// Socket clients dropped (slow or gone).
    pub clients_dropped: u64,
    /// The rolling file's last error.
    pub error: Option<String>,
}

/// The `q` quantile (0 to 1) of `sorted`, nearest rank.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

impl Shared {
    fn metrics(&self, model: &ModelInfo) -> Metrics {
        let cameras: Vec<CameraReport> = self
            .cameras
            .iter()
            .map(|c| {
                let mut r = c.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
                r.decoded = c.decoded.load(Ordering::Relaxed);
                r.inferred = c.inferred.load(Ordering::Relaxed);
                r.dropped = c.dropped.load(Ordering::Relaxed);
                r.failed = c.failed.load(Ordering::Relaxed);
                r
            })
            .collect();
        let mut lat: Vec<f64> = self
            .latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        lat.sort_by(f64::total_cmp);
        Metrics {
            updated_unix_ms: unix_ms(),
            model: model.clone(),
            frames: Totals {
                decoded: cameras.iter().map(|c| c.decoded).sum(),
                inferred: cameras.iter().map(|c| c.inferred).sum(),
                dropped: cameras.iter().map(|c| c.dropped).sum(),
            },
            latency_ms: Latency {
                p50: quantile(&lat, 0.5),
                p95: quantile(&lat, 0.95),
                samples: lat.len(),
            },
            cameras,
            output: OutputReport {
                lines: self.lines.load(Ordering::Relaxed),
                lines_dropped: self.lines_dropped.load(Ordering::Relaxed),
                clients: self.clients.load(Ordering::Relaxed),
                clients_dropped: self.clients_dropped.load(Ordering::Relaxed),
                error: self
                    .output_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
            },
        }
    }
}

/// A decoded frame on its way to the model.
struct Job {
    camera: usize,
    frame: Frame,
    unix_ms: u64,
    seq: u64,
    decoded: Instant,
}

/// One detection line.
#[derive(Serialize)]
struct Line<'a> {
    camera: &'a str,
    /// When the frame was decoded (Unix milliseconds).
    time_ms: u64,
    /// The frame's number on its camera.
    frame: u64,
    width: u32,
    height: u32,
    label: &'a str,
    score: f32,
    /// x1, y1, x2, y2 in the frame's pixels.
    #[serde(rename = "box")]
    bbox: [f32; 4],
}

/// Run until `stop` is set: the cameras of `config` through `connector`, frames scaled to
/// `size`, through `detector`; outputs and metrics at the config's paths. `health.alive` is
/// called every `health.pace.tick` while no thread has been silent for longer than
/// `health.pace.heartbeat_limit`.
pub fn run<D: Detector + Send + 'static>(
    config: &Config,
    detector: D,
    model: ModelInfo,
    size: (u32, u32),
    connector: Arc<dyn Connector>,
    stop: Arc<AtomicBool>,
    health: Health<impl FnMut()>,
) -> Result<(), String> {
    let Health { pace, mut alive } = health;
    let mut socket = SocketOut::bind(&config.socket, config.socket_gid()?)?;
    let mut rolling = RollingFile::open(&config.output_dir, config.rolling_file_mib << 20)?;
    let shared = Arc::new(Shared {
        cameras: config
            .cameras
            .iter()
            .map(|c| CameraStats {
                state: Mutex::new(CameraReport {
                    name: c.name.clone(),
                    state: "connecting".into(),
                    phase: "connecting".into(),
                    ..CameraReport::default()
                }),
                ..CameraStats::default()
            })
            .collect(),
        latencies: Mutex::new(VecDeque::with_capacity(LATENCY_WINDOW)),
        lines: AtomicU64::new(0),
        lines_dropped: AtomicU64::new(0),
        clients: AtomicU64::new(0),
        clients_dropped: AtomicU64::new(0),
        output_error: Mutex::new(None),
        queued: AtomicUsize::new(0),
        queue_capacity: 2 * config.cameras.len().max(1),
    });
    let (frames_tx, frames_rx) = sync_channel::<Job>(shared.queue_capacity);
    let (lines_tx, lines_rx) = sync_channel::<Vec<u8>>(256);
    let mut beats = Vec::new();
    let mut threads = Vec::new();

    for (i, cam) in config.cameras.iter().enumerate() {
        let beat = Arc::new(Heartbeat::new(format!("camera {}", cam.name)));
        beats.push(beat.clone());
        let (shared, stop, tx, connector) = (
            shared.clone(),
            stop.clone(),
            frames_tx.clone(),
            connector.clone(),
        );
        let (url, timing) = (cam.url.clone(), config.timing());
        threads.push(
            std::thread::Builder::new()
                .name(format!("camera-{}", cam.name))
                .spawn(move || {
                    camera_thread(
                        i,
                        &url,
                        size,
                        timing,
                        &*connector,
                        &tx,
                        &shared,
                        &stop,
                        &beat,
                    )
                })
                .map_err(|e| format!("starting a camera thread: {e}"))?,
        );
    }
    // Held until the end: with no camera at all (none configured yet) the inference thread
    // must wait for frames, not see a closed channel and end, which would stop the runtime.
    let _no_camera_keeps_the_channel_open = frames_tx;

    let names: Vec<String> = config.cameras.iter().map(|c| c.name.clone()).collect();
    {
        let beat = Arc::new(Heartbeat::new("inference".into()));
        beats.push(beat.clone());
        let (shared, stop) = (shared.clone(), stop.clone());
        threads.push(
            std::thread::Builder::new()
                .name("inference".into())
                .spawn(move || {
                    inference_thread(detector, &names, frames_rx, lines_tx, &shared, &stop, &beat)
                })
                .map_err(|e| format!("starting the inference thread: {e}"))?,
        );
    }
    {
        let beat = Arc::new(Heartbeat::new("output".into()));
        beats.push(beat.clone());
        let (shared, stop) = (shared.clone(), stop.clone());
        threads.push(
            std::thread::Builder::new()
                .name("output".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        beat.beat();
                        socket.accept();
                        match lines_rx.recv_timeout(Duration::from_millis(100)) {
                            Ok(line) => {
                                socket.send(&line);
                                let r = rolling.write(&line);
                                *shared
                                    .output_error
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner()) = r.err();
                                shared.lines.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(RecvTimeoutError::Timeout) => {}
                            Err(RecvTimeoutError::Disconnected) => break,
                        }
                        shared
                            .clients
                            .store(socket.clients() as u64, Ordering::Relaxed);
                        shared
                            .clients_dropped
                            .store(socket.dropped_clients, Ordering::Relaxed);
                    }
                })
                .map_err(|e| format!("starting the output thread: {e}"))?,
        );
    }

    let mut result = Ok(());
    let mut silent = false;
    while !stop.load(Ordering::Relaxed) {
        let m = shared.metrics(&model);
        let json = serde_json::to_vec_pretty(&m).unwrap_or_default();
        if let Err(e) = write_atomic(&config.metrics, &json) {
            eprintln!("aperture-runtime: {e}");
        }
        match beats.iter().find(|b| b.age() > pace.heartbeat_limit) {
            Some(dead) => {
                // Said once per silence; systemd's watchdog restarts the unit if it lasts.
                if !silent {
                    eprintln!(
                        "aperture-runtime: the {} thread has not checked in for {:?}: \
                         no longer feeding the watchdog",
                        dead.name,
                        dead.age()
                    );
                }
                silent = true;
            }
            None => {
                if silent {
                    eprintln!("aperture-runtime: every thread checks in again");
                }
                silent = false;
                alive();
            }
        }
        if threads.iter().any(|t| t.is_finished()) {
            result = Err("a runtime thread ended early".to_string());
            break;
        }
        std::thread::sleep(pace.tick);
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        if t.join().is_err() {
            result = Err("a runtime thread panicked".to_string());
        }
    }
    let m = shared.metrics(&model);
    let _ = write_atomic(
        &config.metrics,
        &serde_json::to_vec_pretty(&m).unwrap_or_default(),
    );
    result
}

#[allow(clippy::too_many_arguments)]
fn camera_thread(
    index: usize,
    url: &str,
    size: (u32, u32),
    timing: Timing,
    connector: &dyn Connector,
    tx: &SyncSender<Job>,
    shared: &Shared,
    stop: &AtomicBool,
    beat: &Heartbeat,
) {
    let stats = &shared.cameras[index];
    let mut machine = Camera::new(timing, Instant::now());
    let mut source: Option<Box<dyn FrameSource>> = None;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        beat.beat();
        match machine.state() {
            State::Connecting { .. } | State::Streaming { .. } => {
                if source.is_none() {
                    match connector.open(url, size.0, size.1) {
                        Ok(s) => source = Some(s),
                        Err(e) => {
                            machine.on(Event::Error(e), Instant::now());
                        }
                    }
                }
                let full = shared.queued.load(Ordering::Relaxed) >= shared.queue_capacity;
                if let (Some(s), true) = (source.as_mut(), full) {
                    match s.skip(POLL) {
                        Ok(true) => {
                            machine.on(Event::Frame, Instant::now());
                            stats.decoded.fetch_add(1, Ordering::Relaxed);
                            stats.dropped.fetch_add(1, Ordering::Relaxed);
                            seq += 1;
                        }
                        Ok(false) => {
                            machine.on(Event::Tick, Instant::now());
                        }
                        Err(e) => {
                            machine.on(Event::Error(e), Instant::now());
                        }
                    }
                } else if let Some(s) = source.as_mut() {
                    match s.pull(POLL) {
                        Ok(Some(frame)) => {
                            machine.on(Event::Frame, Instant::now());
                            stats.decoded.fetch_add(1, Ordering::Relaxed);
                            seq += 1;
                            let job = Job {
                                camera: index,
                                frame,
                                unix_ms: unix_ms(),
                                seq,
                                decoded: Instant::now(),
                            };
                            // Counted before the send: the inference thread may take it
                            // (and count it out) at once.
                            shared.queued.fetch_add(1, Ordering::Relaxed);
                            match tx.try_send(job) {
                                Ok(()) => {}
                                Err(TrySendError::Full(_)) => {
                                    shared.queued.fetch_sub(1, Ordering::Relaxed);
                                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(TrySendError::Disconnected(_)) => break,
                            }
                        }
                        Ok(None) => {
                            machine.on(Event::Tick, Instant::now());
                        }
                        Err(e) => {
                            machine.on(Event::Error(e), Instant::now());
                        }
                    }
                }
            }
            State::Stalled => {
                if let Some(e) = machine.last_error() {
                    eprintln!("aperture-runtime: camera {url}: stalled: {e}");
                }
                // Dropping the source closes the stream.
                source = None;
                machine.on(Event::Closed, Instant::now());
            }
            State::Backoff { until } => {
                std::thread::sleep(until.saturating_duration_since(Instant::now()).min(POLL));
                machine.on(Event::Tick, Instant::now());
            }
        }
        let mut r = stats.state.lock().unwrap_or_else(|e| e.into_inner());
        r.state = machine.report().into();
        r.phase = machine.phase().into();
        r.failures = machine.failures();
        r.stalls = machine.stalls();
        r.last_error = machine.last_error().map(str::to_string);
    }
}

fn inference_thread<D: Detector>(
    mut detector: D,
    names: &[String],
    rx: Receiver<Job>,
    lines: SyncSender<Vec<u8>>,
    shared: &Shared,
    stop: &AtomicBool,
    beat: &Heartbeat,
) {
    while !stop.load(Ordering::Relaxed) {
        beat.beat();
        let job = match rx.recv_timeout(POLL) {
            Ok(job) => {
                shared.queued.fetch_sub(1, Ordering::Relaxed);
                job
            }
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let detections = match detector.detect(&job.frame) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("aperture-runtime: camera {}: {e}", names[job.camera]);
                shared.cameras[job.camera]
                    .failed
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let ms = job.decoded.elapsed().as_secs_f64() * 1000.0;
        {
            let mut lat = shared.latencies.lock().unwrap_or_else(|e| e.into_inner());
            if lat.len() == LATENCY_WINDOW {
                lat.pop_front();
            }
            lat.push_back(ms);
        }
        shared.cameras[job.camera]
            .inferred
            .fetch_add(1, Ordering::Relaxed);
        for d in &detections {
            let mut line =
                serde_json::to_vec(&line(&names[job.camera], &job, d)).unwrap_or_default();
            line.push(b'\n');
            if lines.try_send(line).is_err() {
                shared.lines_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn line<'a>(camera: &'a str, job: &Job, d: &'a Detection) -> Line<'a> {
    Line {
        camera,
        time_ms: job.unix_ms,
        frame: job.seq,
        width: job.frame.width(),
        height: job.frame.height(),
        label: &d.label,
        score: d.score,
        bbox: [d.bbox.x1, d.bbox.y1, d.bbox.x2, d.bbox.y2],
    }
}

/// The golden self-test: run `detector` on the frames of the manifest's
/// `golden/reference.json` and require the reference's labels, in order, with boxes within
/// 1 px and scores within 0.001.
pub fn self_test(detector: &mut dyn Detector, manifest: &Path) -> Result<usize, String> {
    self_test_first(detector, manifest, usize::MAX)
}

/// [`self_test`] on the reference's first `limit` frames only (at least one): for machines
/// where inference is very slow (the VM tier's emulated guests).
pub fn self_test_first(
    detector: &mut dyn Detector,
    manifest: &Path,
    limit: usize,
) -> Result<usize, String> {
    let dir = manifest.parent().unwrap_or(Path::new("."));
    let path = dir.join("golden/reference.json");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "the model's self-test needs {}: {e} (it comes with the model)",
            path.display()
        )
    })?;
    let reference: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let frames = reference["frames"]
        .as_array()
        .filter(|f| !f.is_empty())
        .ok_or_else(|| format!("{}: no frames", path.display()))?;
    let frames = &frames[..frames.len().min(limit.max(1))];
    for f in frames {
        let file = f["file"].as_str().unwrap_or_default();
        let bytes = std::fs::read(dir.join("golden").join(file))
            .map_err(|e| format!("the self-test frame {file} in {}: {e}", dir.display()))?;
        let frame = Frame::from_ppm(&bytes).map_err(|e| format!("{file}: {e}"))?;
        let got = detector.detect(&frame).map_err(|e| e.to_string())?;
        let want = f["detections"].as_array().cloned().unwrap_or_default();
        let fail = |why: String| Err(format!("the model's self-test on {file} failed: {why}"));
        if got.len() != want.len() {
            return fail(format!(
                "{} detections, the reference has {}",
                got.len(),
                want.len()
            ));
        }
        for (g, w) in got.iter().zip(&want) {
            let b = [g.bbox.x1, g.bbox.y1, g.bbox.x2, g.bbox.y2];
            let wb: Vec<f64> = w["box"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
                .unwrap_or_default();
            let score = w["score"].as_f64().unwrap_or(f64::NAN);
            if w["label"].as_str() != Some(g.label.as_str())
                || wb.len() != 4
                || b.iter()
                    .zip(&wb)
                    .any(|(a, b)| (f64::from(*a) - b).abs() > 1.0)
                || (f64::from(g.score) - score).abs() > 1e-3
            {
                return fail(format!(
                    "got {} {} {b:?}, the reference has {w}",
                    g.label, g.score
                ));
            }
        }
    }
    Ok(frames.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.95), Some(95.0));
        assert_eq!(quantile(&[7.0], 0.95), Some(7.0));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
