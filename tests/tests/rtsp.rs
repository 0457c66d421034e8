//! Tier 2, issue 17 "must show" 2 on the host: cameras stream in over RTSP, detections come out
//! where the objects are, a lost stream reads stalled and comes back.
//!
//! GStreamer's RTSP server (Debian's, through python3-gi: `tests/rtsp/serve.py`) on a free port
//! of 127.0.0.1 streams two cameras as H.264: the golden frames `astronaut` (a person) and
//! `motorcycle`, each a still repeated at 10 fps. The runtime's service (the code
//! `aperture-runtime` runs, called as a library, with the real GStreamer source, the committed
//! NanoDet-m model on the pinned ONNX Runtime library, after its golden self-test) connects over
//! TCP. The test reads the detection lines from the Unix socket as a client would and requires,
//! for each camera, the object's label with a box within IoU 0.5 of the slice-1 reference box
//! scaled to the runtime's frame size (the model's input, 416 x 416). Then the server is killed:
//! both cameras read `stalled` in the metrics file while the service keeps running; the server
//! is started again on the same port: frames, inferences and detections flow again.
//!
//! The second test runs the program (`aperture-device --features runtime` as
//! `aperture-runtime`) under a fake `NOTIFY_SOCKET` and the unit's `WATCHDOG_USEC`: READY=1,
//! WATCHDOG=1, stalled but alive when its camera goes, exit 0 on SIGTERM; and with
//! `WATCHDOG_PID` naming another process, READY=1 and no ping.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use aperture_runtime::config::Config;
use aperture_runtime::service::{self, ModelInfo};
use aperture_runtime::source::rtsp::Rtsp;
use aperture_runtime::{OnnxRuntime, Options, OrtDetector};
use aperture_tests::rtsp::{self, have_rtsp_server, raw_frame, RtspServer};
use aperture_vision::Manifest;
use serde_json::Value;

/// The cameras: (name, golden frame, the label expected).
const CAMERAS: [(&str, &str, &str); 2] = [
    ("door", "astronaut", "person"),
    ("yard", "motorcycle", "motorcycle"),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn golden() -> PathBuf {
    repo().join("models/nanodet-m/golden")
}

/// The pinned ONNX Runtime library, or why the test cannot run.
fn library() -> Option<PathBuf> {
    let why = match std::env::var_os("APERTURE_ONNXRUNTIME") {
        Some(p) if Path::new(&p).is_file() => return Some(PathBuf::from(p)),
        _ => "rtsp: APERTURE_ONNXRUNTIME does not name the ONNX Runtime library; \
              `cargo xtask test` sets it and installs the library as root"
            .to_string(),
    };
    if aperture_sys::tool::required() {
        panic!("APERTURE_REQUIRE_TOOLS=1 and a tool is missing: {why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

fn iou(a: [f64; 4], b: [f64; 4]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: [f64; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    inter / (area(a) + area(b) - inter)
}

fn metrics(path: &Path) -> Value {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

/// Poll the metrics file until `ok` holds, at most `limit`; panics with the last metrics.
fn wait_for(path: &Path, limit: Duration, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let m = metrics(path);
        if ok(&m) {
            eprintln!("rtsp: {what} after {:.1} s", t.elapsed().as_secs_f64());
            return m;
        }
        assert!(
            t.elapsed() < limit,
            "rtsp: not {what} within {limit:?}; metrics: {m:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn camera<'a>(m: &'a Value, name: &str) -> &'a Value {
    m["cameras"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == name))
        .unwrap_or(&Value::Null)
}

/// Read detection lines until every camera showed its object where it is, at most `limit`;
/// returns the lines read.
fn expect_detections(
    lines: &mpsc::Receiver<String>,
    expected: &[(String, String, [f64; 4])],
    limit: Duration,
) -> usize {
    let t = Instant::now();
    let mut found = vec![false; expected.len()];
    let mut read = 0;
    let mut seen = Vec::new();
    while found.iter().any(|f| !f) {
        let left = limit.saturating_sub(t.elapsed());
        assert!(
            !left.is_zero(),
            "rtsp: within {limit:?}, no detection matched {expected:?} for every camera; \
             read {read} lines, for example {seen:?}"
        );
        let Ok(line) = lines.recv_timeout(left) else {
            continue;
        };
        read += 1;
        let d: Value = serde_json::from_str(&line).expect("a detection line is JSON");
        let b: Vec<f64> = d["box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (i, (cam, label, want)) in expected.iter().enumerate() {
            if d["camera"] == cam.as_str()
                && d["label"] == label.as_str()
                && iou([b[0], b[1], b[2], b[3]], *want) > 0.5
            {
                if !found[i] {
                    eprintln!(
                        "rtsp: {cam}: {label} {:.2} at {b:?}, IoU {:.3} with {want:?}",
                        d["score"].as_f64().unwrap(),
                        iou([b[0], b[1], b[2], b[3]], *want)
                    );
                }
                found[i] = true;
            }
        }
        if seen.len() < 6 {
            seen.push(line);
        }
    }
    read
}

#[test]
#[ignore = "tier 2: needs GStreamer's RTSP server and the pinned ONNX Runtime (cargo xtask test installs them)"]
fn cameras_stream_in_detections_land_on_the_objects_and_a_lost_stream_stalls_and_comes_back() {
    let started = Instant::now();
    let Some(lib) = library() else { return };
    if !have_rtsp_server("rtsp") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let manifest_path = repo().join("models/nanodet-m/manifest.toml");
    let manifest = Manifest::load(&manifest_path).unwrap();
    let (w, h) = manifest.input.size();
    let reference: Value = serde_json::from_slice(
        &std::fs::read(golden().join("reference.json")).expect("the golden reference"),
    )
    .unwrap();

    // Each golden frame as raw RGB (rows padded to 4 bytes), and the box expected at the
    // runtime's frame size.
    let mut mounts = Vec::new();
    let mut expected = Vec::new();
    for (cam, image, label) in CAMERAS {
        let (mount, frame) = raw_frame(
            cam,
            &rtsp::golden(image),
            &dir.path().join(format!("{image}.rgb")),
        )
        .unwrap();
        let (fw, fh) = (frame.width() as usize, frame.height() as usize);
        mounts.push(mount);
        let r = reference["frames"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["file"] == format!("{image}.ppm"))
            .unwrap();
        let d = r["detections"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["label"] == label)
            .unwrap_or_else(|| panic!("the reference has no {label} in {image}"));
        let b: Vec<f64> = d["box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let (sx, sy) = (w as f64 / fw as f64, h as f64 / fh as f64);
        expected.push((
            cam.to_string(),
            label.to_string(),
            [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy],
        ));
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = RtspServer::start(port, &mounts).unwrap();

    let socket = dir.path().join("detections.sock");
    let metrics_path = dir.path().join("runtime.json");
    let mut text = format!(
        "model = {:?}\nonnxruntime = {:?}\nsocket = {:?}\noutput_dir = {:?}\nmetrics = {:?}\n\
         rolling_file_mib = 1\nstall_after_ms = 2000\nconnect_timeout_ms = 5000\n",
        manifest_path,
        lib,
        socket,
        dir.path().join("out"),
        metrics_path
    );
    for (cam, _, _) in CAMERAS {
        text += &format!("[[camera]]\nname = \"{cam}\"\nurl = \"rtsp://127.0.0.1:{port}/{cam}\"\n");
    }
    let config = Config::parse(&text, Path::new("rtsp-test.toml")).unwrap();

    // As aperture-runtime starts: the model, its self-test, then the cameras.
    let ort = OnnxRuntime::load(&lib).unwrap();
    let mut detector = OrtDetector::new(ort, &manifest, &Options::default()).unwrap();
    assert_eq!(
        service::self_test(&mut detector, &manifest_path).unwrap(),
        3
    );
    let model = ModelInfo {
        name: manifest.model.name.clone(),
        sha256: manifest.model.sha256.clone(),
        execution_provider: "cpu".into(),
        fallback: false,
        source: "built-in".into(),
        manifest: manifest_path.clone(),
        bundle_digest: None,
        bundle_version: None,
        last_rejection: None,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = {
        let (config, stop) = (config.clone(), stop.clone());
        std::thread::spawn(move || {
            service::run(
                &config,
                detector,
                model,
                (w as u32, h as u32),
                Arc::new(Rtsp),
                stop,
                service::Health {
                    pace: Default::default(),
                    alive: || {},
                },
            )
        })
    };

    // A client of the socket, reading every line as it comes.
    let t = Instant::now();
    let client = loop {
        if let Ok(c) = UnixStream::connect(&socket) {
            break c;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no socket {socket:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(client).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let read = expect_detections(&lines, &expected, Duration::from_secs(60));
    eprintln!("rtsp: {read} detection lines until both objects were found");
    let m = wait_for(
        &metrics_path,
        Duration::from_secs(10),
        "both cameras streaming",
        |m| {
            CAMERAS.iter().all(|(c, _, _)| {
                camera(m, c)["state"] == "streaming" && camera(m, c)["inferred"].as_u64() > Some(0)
            })
        },
    );
    assert_eq!(m["model"]["sha256"], manifest.model.sha256);
    assert!(m["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    eprintln!(
        "rtsp: frames {}, latency p50 {:.1} ms p95 {:.1} ms",
        m["frames"],
        m["latency_ms"]["p50"].as_f64().unwrap(),
        m["latency_ms"]["p95"].as_f64().unwrap()
    );

    // The cameras go away: both stalled, the service still running.
    drop(server);
    let m = wait_for(
        &metrics_path,
        Duration::from_secs(20),
        "both cameras stalled",
        |m| {
            CAMERAS
                .iter()
                .all(|(c, _, _)| camera(m, c)["state"] == "stalled")
        },
    );
    assert!(
        !runtime.is_finished(),
        "the runtime stopped when its cameras went away"
    );
    let inferred_at_stall: Vec<u64> = CAMERAS
        .iter()
        .map(|(c, _, _)| camera(&m, c)["inferred"].as_u64().unwrap())
        .collect();
    eprintln!("rtsp: stalled: {:#}", m["cameras"]);
    // Stay down past the first backoff so the reconnection is refused at least once.
    std::thread::sleep(Duration::from_secs(3));
    while lines.try_recv().is_ok() {}

    // Back: the cameras reconnect by themselves and detections flow again.
    let _server = RtspServer::start(port, &mounts).unwrap();
    let m = wait_for(
        &metrics_path,
        Duration::from_secs(60),
        "both cameras streaming again",
        |m| {
            CAMERAS.iter().enumerate().all(|(i, (c, _, _))| {
                camera(m, c)["state"] == "streaming"
                    && camera(m, c)["inferred"].as_u64().unwrap_or(0) > inferred_at_stall[i]
            })
        },
    );
    for (c, _, _) in CAMERAS {
        assert!(camera(&m, c)["stalls"].as_u64().unwrap() >= 1, "{m:#}");
    }
    expect_detections(&lines, &expected, Duration::from_secs(30));
    assert!(!runtime.is_finished());

    stop.store(true, Ordering::Relaxed);
    runtime.join().unwrap().unwrap();
    assert!(!socket.exists(), "the socket is removed on stop");
    let out = std::fs::read_to_string(dir.path().join("out/detections.jsonl")).unwrap();
    assert!(
        out.lines().count() >= 2,
        "the rolling file has the detections"
    );
    eprintln!(
        "rtsp: the whole test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// `aperture-device` with its `runtime` feature (the program an image would run), built as the
/// other suites build workspace binaries: `--workspace`, so tier 1's build serves.
fn runtime_binary() -> PathBuf {
    let mut cargo = Command::new(env!("CARGO"));
    for (key, _) in std::env::vars_os() {
        if aperture_sys::cmd::is_package_env(&key) {
            cargo.env_remove(key);
        }
    }
    let out = cargo
        .current_dir(repo())
        .args([
            "build",
            "--workspace",
            "--bin",
            "aperture-device",
            "--features",
            "aperture-device/runtime",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building aperture-device --features runtime failed"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["target"]["name"] == "aperture-device")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo named no aperture-device executable")
}

#[test]
#[ignore = "tier 2: needs GStreamer's RTSP server and the pinned ONNX Runtime (cargo xtask test installs them)"]
fn the_program_tells_systemd_ready_feeds_the_watchdog_outlives_its_camera_and_stops_on_sigterm() {
    let started = Instant::now();
    let Some(lib) = library() else { return };
    if !have_rtsp_server("rtsp") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mount, _) = raw_frame(
        "door",
        &rtsp::golden("astronaut"),
        &dir.path().join("astronaut.rgb"),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = RtspServer::start(port, &[mount]).unwrap();

    let metrics_path = dir.path().join("runtime.json");
    let config = dir.path().join("runtime.toml");
    std::fs::write(
        &config,
        format!(
            "model = {:?}\nonnxruntime = {:?}\nsocket = {:?}\noutput_dir = {:?}\nmetrics = {:?}\n\
             stall_after_ms = 2000\n[[camera]]\nname = \"door\"\nurl = \"rtsp://127.0.0.1:{port}/door\"\n",
            repo().join("models/nanodet-m/manifest.toml"),
            lib,
            dir.path().join("d.sock"),
            dir.path().join("out"),
            metrics_path
        ),
    )
    .unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let link = dir.path().join("aperture-runtime");
    std::os::unix::fs::symlink(runtime_binary(), &link).unwrap();
    // The unit's WatchdogSec=30, as systemd passes it.
    let mut child = Command::new(&link)
        .args(["--config".as_ref(), config.as_os_str()])
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "30000000")
        .spawn()
        .unwrap();
    let next = || {
        let mut buf = [0u8; 64];
        let n = notify.recv(&mut buf).expect("a notification within 60 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next(), "READY=1", "READY=1 first, after the self-test");
    assert_eq!(next(), "WATCHDOG=1");
    wait_for(
        &metrics_path,
        Duration::from_secs(30),
        "the camera streaming",
        |m| {
            camera(m, "door")["state"] == "streaming"
                && camera(m, "door")["inferred"].as_u64() > Some(0)
        },
    );
    drop(server);
    wait_for(
        &metrics_path,
        Duration::from_secs(20),
        "the camera stalled",
        |m| camera(m, "door")["state"] == "stalled",
    );
    // Still alive and still feeding the watchdog with its camera gone.
    while next() != "WATCHDOG=1" {}
    assert!(
        child.try_wait().unwrap().is_none(),
        "the program exited when its camera went away"
    );
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM: {status}");
    let mut last = String::new();
    notify
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    while let Ok(n) = notify.recv(&mut buf) {
        last = String::from_utf8_lossy(&buf[..n]).into_owned();
    }
    assert_eq!(last, "STOPPING=1");

    // A watchdog meant for another process (WATCHDOG_PID, sd_watchdog_enabled(3)) is not fed.
    let mut child = Command::new(&link)
        .args(["--config".as_ref(), config.as_os_str()])
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "1000000")
        .env("WATCHDOG_PID", "1")
        .spawn()
        .unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    assert_eq!(next(), "READY=1");
    notify
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let after_ready = notify.recv(&mut buf).map(|n| buf[..n].to_vec());
    assert!(
        after_ready.is_err(),
        "a notification after READY=1 for another process's watchdog: {:?}",
        after_ready.map(|b| String::from_utf8_lossy(&b).into_owned())
    );
    assert!(child.try_wait().unwrap().is_none(), "the program ended");
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!(
        "rtsp: the program's test took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
