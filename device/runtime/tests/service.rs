//! Tier 1: the service's threads in memory, below its two traits (the RTSP source and the
//! ONNX Runtime detector are proven by the tier-2 `rtsp` suite and the golden test): frames
//! faster than the detector are dropped and counted, never queued (nor made while the queue is
//! full: skipped unscaled); detections reach a socket
//! client and the rolling file; a source that ends is stalled, backed off and opened again;
//! stop ends every thread; a hung detector stops the watchdog's pings until it comes back.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aperture_runtime::config::Config;
use aperture_runtime::service::{self, Health, ModelInfo};
use aperture_runtime::source::{Connector, FrameSource};
use aperture_runtime::watchdog::{Pace, Watchdog, HEARTBEAT_FLOOR};
use aperture_runtime::{Detector, Error};
use aperture_vision::decode::BBox;
use aperture_vision::{Detection, Frame};

/// Opens sources that give `frames` frames, one every 10 ms, then fail; every other open
/// fails at once (a camera that refuses a connection).
struct Fake {
    opens: AtomicUsize,
    frames: usize,
    /// Frames the sources made (a real source scales and converts each) and threw away
    /// unmade when asked to skip them.
    made: Arc<AtomicUsize>,
    skipped: Arc<AtomicUsize>,
}

impl Fake {
    fn new(frames: usize) -> Fake {
        Fake {
            opens: AtomicUsize::new(0),
            frames,
            made: Arc::default(),
            skipped: Arc::default(),
        }
    }
}

struct FakeSource {
    left: usize,
    size: (u32, u32),
    made: Arc<AtomicUsize>,
    skipped: Arc<AtomicUsize>,
}

impl FakeSource {
    /// Wait for the next frame; an error at the end of the stream.
    fn next(&mut self) -> Result<(), String> {
        if self.left == 0 {
            return Err("end of stream".into());
        }
        self.left -= 1;
        std::thread::sleep(Duration::from_millis(10));
        Ok(())
    }
}

impl Connector for Fake {
    fn open(&self, url: &str, width: u32, height: u32) -> Result<Box<dyn FrameSource>, String> {
        assert!(url.starts_with("rtsp://"));
        if self.opens.fetch_add(1, Ordering::SeqCst) % 2 == 1 {
            return Err(format!("{url}: connection refused"));
        }
        Ok(Box::new(FakeSource {
            left: self.frames,
            size: (width, height),
            made: self.made.clone(),
            skipped: self.skipped.clone(),
        }))
    }
}

impl FrameSource for FakeSource {
    fn pull(&mut self, _timeout: Duration) -> Result<Option<Frame>, String> {
        self.next()?;
        self.made.fetch_add(1, Ordering::SeqCst);
        let (w, h) = self.size;
        Ok(Some(
            Frame::new(w, h, vec![0; (w * h * 3) as usize]).unwrap(),
        ))
    }

    fn skip(&mut self, _timeout: Duration) -> Result<bool, String> {
        self.next()?;
        self.skipped.fetch_add(1, Ordering::SeqCst);
        Ok(true)
    }
}

/// Takes 50 ms a frame (five frames' time) and finds one thing.
struct Slow;

impl Detector for Slow {
    fn detect(&mut self, frame: &Frame) -> Result<Vec<Detection>, Error> {
        std::thread::sleep(Duration::from_millis(50));
        Ok(vec![Detection {
            class: 0,
            label: "thing".into(),
            score: 0.9,
            bbox: BBox {
                x1: 1.0,
                y1: 2.0,
                x2: frame.width() as f32,
                y2: 4.0,
            },
        }])
    }
}

fn metrics(path: &Path) -> serde_json::Value {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

#[test]
fn frames_are_dropped_not_queued_detections_reach_the_outputs_and_a_lost_source_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("d.sock");
    let metrics_path = dir.path().join("runtime.json");
    let text = format!(
        "model = \"m.toml\"\nonnxruntime = \"lib.so\"\nsocket = {socket:?}\n\
         output_dir = {:?}\nmetrics = {metrics_path:?}\nstall_after_ms = 1000\n\
         [[camera]]\nname = \"cam\"\nurl = \"rtsp://127.0.0.1:1/x\"\n",
        dir.path().join("out")
    );
    let config = Config::parse(&text, Path::new("t.toml")).unwrap();
    let fake = Arc::new(Fake::new(60));
    let stop = Arc::new(AtomicBool::new(false));
    let beats = Arc::new(AtomicUsize::new(0));
    let runtime = {
        let (fake, stop, beats) = (fake.clone(), stop.clone(), beats.clone());
        std::thread::spawn(move || {
            service::run(
                &config,
                Slow,
                ModelInfo {
                    name: "fake".into(),
                    sha256: "00".into(),
                    execution_provider: "cpu".into(),
                    ..ModelInfo::default()
                },
                (8, 6),
                fake,
                stop,
                Health {
                    pace: Pace::default(),
                    alive: move || {
                        beats.fetch_add(1, Ordering::SeqCst);
                    },
                },
            )
        })
    };
    let t = Instant::now();
    let client = loop {
        if let Ok(c) = UnixStream::connect(&socket) {
            break c;
        }
        assert!(t.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(20));
    };
    // A second client that never reads holds nobody up (its dropping: output.rs's tests).
    let _stuck = UnixStream::connect(&socket).unwrap();
    let mut reader = BufReader::new(client);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let d: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(d["camera"], "cam");
    assert_eq!(d["label"], "thing");
    assert_eq!(d["box"], serde_json::json!([1.0, 2.0, 8.0, 4.0]));
    assert_eq!(
        (d["width"].as_u64(), d["height"].as_u64()),
        (Some(8), Some(6))
    );

    // The first source ends after 60 frames (0.6 s), the next open is refused, the one after
    // works: two stalls, backoffs of 1 s and 2 s, streaming again after about 3.6 s.
    let reader_thread = std::thread::spawn(move || reader.lines().count());
    let t = Instant::now();
    let m = loop {
        let m = metrics(&metrics_path);
        let cam = &m["cameras"][0];
        if cam["stalls"].as_u64() >= Some(2) && cam["state"] == "streaming" {
            break m;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the camera did not come back: {m:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(fake.opens.load(Ordering::SeqCst) >= 3);
    let cam = &m["cameras"][0];
    let (decoded, inferred, dropped) = (
        cam["decoded"].as_u64().unwrap(),
        cam["inferred"].as_u64().unwrap(),
        cam["dropped"].as_u64().unwrap(),
    );
    assert!(decoded >= 60, "{cam}");
    assert!(
        dropped > decoded / 2,
        "a detector five times slower drops most frames: {cam}"
    );
    assert!(
        inferred + dropped <= decoded && decoded <= inferred + dropped + 3,
        "{cam}"
    );

    assert!(
        cam["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("connection refused")),
        "{cam}"
    );
    assert!(m["latency_ms"]["p95"].as_f64().unwrap() >= 50.0, "{m:#}");
    assert_eq!(m["model"]["sha256"], "00");
    assert!(beats.load(Ordering::SeqCst) >= 2, "the watchdog is fed");

    stop.store(true, Ordering::SeqCst);
    runtime.join().unwrap().unwrap();
    assert!(!socket.exists());
    assert!(reader_thread.join().unwrap() >= 5);
    let m = metrics(&metrics_path);
    // While the inference queue (two frames for one camera) is full, frames are skipped
    // unmade: only those with room in the queue are made. The final metrics count every
    // frame the sources gave.
    let cam = &m["cameras"][0];
    let count = |what: &str| cam[what].as_u64().unwrap();
    let (made, skipped) = (
        fake.made.load(Ordering::SeqCst) as u64,
        fake.skipped.load(Ordering::SeqCst) as u64,
    );
    assert_eq!(made + skipped, count("decoded"), "{cam}");
    assert!(
        skipped > 0 && skipped <= count("dropped") && made < count("decoded") / 2,
        "made {made}, skipped {skipped}: {cam}"
    );
    let lines = std::fs::read_to_string(dir.path().join("out/detections.jsonl")).unwrap();
    assert_eq!(
        lines.lines().count() as u64,
        m["output"]["lines"].as_u64().unwrap()
    );
}

#[test]
fn with_no_camera_the_service_keeps_running_and_feeding_the_watchdog_until_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_path = dir.path().join("runtime.json");
    let text = format!(
        "model = \"m.toml\"\nonnxruntime = \"lib.so\"\nsocket = {:?}\n\
         output_dir = {:?}\nmetrics = {metrics_path:?}\n",
        dir.path().join("d.sock"),
        dir.path().join("out")
    );
    let config = Config::parse(&text, Path::new("t.toml")).unwrap();
    assert!(config.cameras.is_empty());
    let stop = Arc::new(AtomicBool::new(false));
    let beats = Arc::new(AtomicUsize::new(0));
    let runtime = {
        let (stop, beats) = (stop.clone(), beats.clone());
        std::thread::spawn(move || {
            service::run(
                &config,
                Slow,
                ModelInfo::default(),
                (8, 6),
                Arc::new(Fake::new(0)),
                stop,
                Health {
                    pace: Pace::default(),
                    alive: move || {
                        beats.fetch_add(1, Ordering::SeqCst);
                    },
                },
            )
        })
    };
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!runtime.is_finished(), "the service ended with no camera");
    assert!(
        beats.load(Ordering::SeqCst) >= 3,
        "the watchdog was not fed"
    );
    assert_eq!(metrics(&metrics_path)["cameras"], serde_json::json!([]));
    stop.store(true, Ordering::SeqCst);
    runtime.join().unwrap().unwrap();
}

/// Hangs on its first frame for `hang`, telling the test when it starts to; then finds nothing.
struct Hangs {
    hang: Duration,
    hanging: Arc<AtomicBool>,
}

impl Detector for Hangs {
    fn detect(&mut self, _frame: &Frame) -> Result<Vec<Detection>, Error> {
        if !self.hanging.swap(true, Ordering::SeqCst) {
            std::thread::sleep(self.hang);
        }
        Ok(Vec::new())
    }
}

#[test]
fn a_hung_inference_thread_stops_the_watchdog_pings_until_it_checks_in_again() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "model = \"m.toml\"\nonnxruntime = \"lib.so\"\nsocket = {:?}\n\
         output_dir = {:?}\nmetrics = {:?}\n\
         [[camera]]\nname = \"cam\"\nurl = \"rtsp://127.0.0.1:1/x\"\n",
        dir.path().join("d.sock"),
        dir.path().join("out"),
        dir.path().join("runtime.json"),
    );
    let config = Config::parse(&text, Path::new("t.toml")).unwrap();
    // WatchdogSec=1: pings every 0.5 s, and a thread silent for the floor (2 s) stops them.
    let pace = Pace::new(Some(Watchdog {
        interval: Duration::from_secs(1),
    }));
    assert_eq!(pace.heartbeat_limit, HEARTBEAT_FLOOR);
    let hang = HEARTBEAT_FLOOR * 3;
    let hanging = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let pings = Arc::new(std::sync::Mutex::new(Vec::<Instant>::new()));
    let runtime = {
        let (stop, pings, hanging) = (stop.clone(), pings.clone(), hanging.clone());
        std::thread::spawn(move || {
            service::run(
                &config,
                Hangs { hang, hanging },
                ModelInfo::default(),
                (8, 6),
                Arc::new(Fake::new(1000)),
                stop,
                Health {
                    pace,
                    alive: move || pings.lock().unwrap().push(Instant::now()),
                },
            )
        })
    };
    let t = Instant::now();
    while !hanging.load(Ordering::SeqCst) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no frame reached the detector"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let hung_at = Instant::now();
    std::thread::sleep(hang + Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    runtime.join().unwrap().unwrap();
    let pings = pings.lock().unwrap();
    let at = |i: Instant| i.saturating_duration_since(hung_at);
    // While the thread hangs: pings until its silence passes the limit (plus a tick), none
    // after, and they come back once it checks in again.
    let gap_from = HEARTBEAT_FLOOR + pace.tick + Duration::from_millis(300);
    let in_gap: Vec<_> = pings
        .iter()
        .map(|&p| at(p))
        // The hang began up to a poll before the test saw it: its end is taken early too.
        .filter(|&d| d > gap_from && d < hang - Duration::from_millis(500))
        .collect();
    assert!(
        in_gap.is_empty(),
        "pinged while the inference thread hung: {in_gap:?}"
    );
    assert!(
        pings
            .iter()
            .any(|&p| at(p) > Duration::ZERO && at(p) < HEARTBEAT_FLOOR),
        "no ping in the first second of the hang (the limit is {HEARTBEAT_FLOOR:?})"
    );
    assert!(
        pings.iter().any(|&p| at(p) > hang),
        "the pings did not come back after the hang"
    );
    for pair in pings.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap < pace.tick * 4 || at(pair[1]) > hang - Duration::from_millis(500),
            "a gap of {gap:?} between pings outside the hang"
        );
    }
}
