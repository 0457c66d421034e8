//! `bench runtime`: the inference runtime's frames per second, latency and memory for 1 and 4
//! camera streams, beside the same model run by the onnxruntime Python package on the same
//! streams (issue 17, "Must show 4").
//!
//! **The two sides.**
//! * **aperture-runtime**: the program as images ship it, `aperture-device` built with the
//!   release profile and its feature `runtime`, run as `aperture-runtime --config FILE` with
//!   the committed NanoDet-m manifest and the pinned ONNX Runtime library
//!   (`libonnxruntime.so.1.31.1` from the official wheel, put in place by xtask's preflight).
//! * **python onnxruntime**: `python/runtime_peer.py` in the virtual environment the preflight
//!   fills ([`PYTHON_VENV`]: `onnxruntime==1.31.1`, the same ONNX Runtime release as the
//!   library, and numpy; Debian's PyGObject and GStreamer through `--system-site-packages`).
//!   It mirrors the runtime's design (a thread per camera, one inference thread, an output
//!   thread, a metrics file every 0.5 s), with preprocessing, decoding and NMS in numpy.
//!
//! **Fair by construction.**
//! * The same model file (the manifest's, verified by the runtime against its sha256), the same
//!   ONNX Runtime release, one session on the CPU with the runtime's default of intra-op threads
//!   (`aperture_runtime::Options::default()`, one) on both sides, sequential execution (no
//!   inter-op pool), every graph optimisation, no memory pattern.
//! * The same frames: GStreamer's RTSP server of the `rtsp` suite (`tests/rtsp/serve.py`,
//!   Debian's gst-rtsp-server, x264) on 127.0.0.1 serves N streams, each a golden frame
//!   (astronaut, coffee, motorcycle, astronaut) repeated at 10 fps as lossless H.264 (x264 at
//!   quantizer 0, so every decoded frame of a stream is the same bytes); both sides read
//!   them over RTSP/TCP and decode them with OpenH264, the runtime with the decoder it
//!   compiles in (retina, OpenH264, its own scaling and colour conversion to the model's
//!   416 x 416, the newest frame kept), the peer through GStreamer (rtspsrc, openh264dec,
//!   videoconvert, videoscale, an appsink that keeps only the newest frame), so both pay for
//!   decoding alike and a slow side skips frames rather than queueing them. A fresh server per
//!   run, one side at a time, 1 stream then 4.
//! * The same work per frame: preprocessing, inference, decoding, NMS, one JSON line per
//!   detection written out (the runtime also serves them on its socket, with no client here).
//! * The same measurement, read by this bench from each side's metrics file (same shape):
//!   frames inferred per second between two snapshots a fixed window apart, after a warm-up
//!   (the snapshots' own timestamps); latency from a frame's arrival out of the appsink to its
//!   detections, p50 and p95 by nearest rank over the last 1024 frames (the runtime's own
//!   metric; the peer keeps the same window); peak RSS (`VmHWM` of `/proc/PID/status`) and CPU
//!   time (`/proc/PID/stat`) of the one process each side is.
//!
//! **Checked, not only timed.** Before its cameras start, the runtime passes its golden
//! self-test (`service::self_test`: the frames of `golden/reference.json`, labels in order,
//! boxes within 1 px, scores within 0.001) or refuses to start; the peer writes its detections
//! on the same golden frames and this bench puts them through the same `service::self_test`.
//! After each pair of runs, the two sides' detection lines are compared camera by camera: every
//! frame of a stream is the same bytes, so each side must give every frame the same
//! detections, the two sides the same as each other (labels in order, corners within 0.05 px,
//! scores within 0.001), holding the golden object where the reference puts it (IoU 0.5). Any
//! disagreement, a stalled or failed stream, or a side that exits badly fails the bench.

mod check;
mod side;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use aperture_vision::{Frame, Manifest};

use crate::table::{print_table, Row};
use side::{Measured, Side};

/// The virtual environment (below `APERTURE_PYTHON_TOOLS`) that holds the onnxruntime Python
/// package; xtask's preflight makes it under the same name.
pub const PYTHON_VENV: &str = "onnxruntime-peer";

/// The golden frames the cameras show, in camera order (repeated past three), and the object
/// each must show.
const CAMERAS: [(&str, &str); 3] = [
    ("astronaut.ppm", "person"),
    ("coffee.ppm", "cup"),
    ("motorcycle.ppm", "motorcycle"),
];

/// Options of `bench runtime`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Rounds of every measurement (the table shows the median run).
    pub runs: u32,
    /// The stream counts, each a row per side.
    pub streams: Vec<usize>,
    /// Seconds each side streams before the measurement.
    pub warmup: Duration,
    /// Seconds measured.
    pub window: Duration,
}

/// What both sides are given.
struct Setup {
    ws: PathBuf,
    work: PathBuf,
    manifest_path: PathBuf,
    manifest: Manifest,
    library: PathBuf,
    runtime: PathBuf,
    python: PathBuf,
    peer: PathBuf,
    /// Each golden frame as raw RGB rows padded to 4 bytes, with its size.
    frames: Vec<(PathBuf, u32, u32)>,
    intra_threads: usize,
}

/// Run `bench runtime`.
pub fn run(opts: &Options) -> Result<()> {
    if opts.streams.is_empty() || opts.streams.contains(&0) {
        bail!("--streams needs stream counts of at least 1, for example `--streams 1,4`");
    }
    if opts.window.is_zero() || opts.runs == 0 {
        bail!("--window and --runs must be at least 1");
    }
    let ws = crate::workspace();
    let work = ws.join("target/bench/runtime");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let setup = Setup::new(&ws, &work)?;
    let load_before = load_average();
    let mut all: Vec<Measured> = Vec::new();
    for round in 1..=opts.runs {
        for &n in &opts.streams {
            // Each side first in every other round, so neither always follows the other.
            let mut sides = [Side::Aperture, Side::Python];
            if round % 2 == 0 {
                sides.reverse();
            }
            let mut pair = Vec::new();
            for side in sides {
                eprintln!(
                    "bench runtime: run {round}/{}: {}, {n} stream{}: {} s warm-up, {} s measured",
                    opts.runs,
                    side.name(),
                    if n == 1 { "" } else { "s" },
                    opts.warmup.as_secs(),
                    opts.window.as_secs()
                );
                let server = Server::start(&setup, n)?;
                let m = side::measure(&setup, side, n, &server.urls, opts)
                    .with_context(|| format!("{}, {n} streams", side.name()))?;
                drop(server);
                eprintln!(
                    "bench runtime:   {:.1} frames/s, p50 {:.1} ms, peak RSS {:.0} MiB, \
                     {:.1} CPU ms a frame",
                    m.fps(),
                    m.p50,
                    m.peak_rss_mib(),
                    m.cpu_ms_per_frame()
                );
                pair.push(m);
            }
            pair.sort_by_key(|m| m.side != Side::Aperture);
            check::streams_agree(&setup, &pair[0], &pair[1])?;
            all.extend(pair);
        }
    }
    let load_after = load_average();
    check::golden_python(&setup)?;
    // Each row: the run with the median frames per second.
    let mut results: Vec<&Measured> = Vec::new();
    for &n in &opts.streams {
        for side in [Side::Aperture, Side::Python] {
            let mut runs: Vec<&Measured> = all
                .iter()
                .filter(|m| m.streams == n && m.side == side)
                .collect();
            runs.sort_by(|a, b| a.fps().total_cmp(&b.fps()));
            results.push(runs[runs.len() / 2]);
        }
    }
    report(&setup, &results, &all, opts, [load_before, load_after]);
    let _ = fs::remove_dir_all(&work);
    Ok(())
}

impl Setup {
    fn new(ws: &Path, work: &Path) -> Result<Setup> {
        let manifest_path = ws.join("models/nanodet-m/manifest.toml");
        let manifest = Manifest::load(&manifest_path)?;
        let tools = std::env::var_os("APERTURE_PYTHON_TOOLS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/opt/aperture-tools"));
        let version = aperture_runtime::ONNXRUNTIME_VERSION;
        let library = std::env::var_os("APERTURE_ONNXRUNTIME")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                tools
                    .join(format!("onnxruntime-{version}"))
                    .join(format!("libonnxruntime.so.{version}"))
            });
        let python = tools.join(PYTHON_VENV).join("bin/python");
        let mut missing = Vec::new();
        if !library.is_file() {
            missing.push(format!("the ONNX Runtime library {}", library.display()));
        }
        if !python.exists() {
            missing.push(format!(
                "the onnxruntime Python peer's {}",
                python.display()
            ));
        }
        if !missing.is_empty() {
            bail!(
                "{} missing: run `sudo cargo xtask bench runtime`, whose preflight installs them",
                missing.join(" and ") + if missing.len() == 1 { " is" } else { " are" }
            );
        }
        let peer = ws.join("host/bench/python/runtime_peer.py");
        let runtime = build_runtime(ws)?;
        let link = work.join("aperture-runtime");
        std::os::unix::fs::symlink(&runtime, &link)
            .with_context(|| format!("linking {}", link.display()))?;
        let mut frames = Vec::new();
        for (file, _) in CAMERAS {
            let path = ws.join("models/nanodet-m/golden").join(file);
            let frame = Frame::from_ppm(
                &fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
            )
            .with_context(|| format!("reading {}", path.display()))?;
            let raw = work.join(file.replace(".ppm", ".rgb"));
            fs::write(&raw, padded_rows(&frame))?;
            frames.push((raw, frame.width(), frame.height()));
        }
        Ok(Setup {
            ws: ws.to_path_buf(),
            work: work.to_path_buf(),
            manifest_path,
            manifest,
            library,
            runtime: link,
            python,
            peer,
            frames,
            intra_threads: aperture_runtime::Options::default().intra_threads,
        })
    }
}

/// The frame's RGB rows padded to 4 bytes (the stride GStreamer's raw video expects).
fn padded_rows(frame: &Frame) -> Vec<u8> {
    let (w, h) = (frame.width() as usize, frame.height() as usize);
    let stride = (w * 3).div_ceil(4) * 4;
    let mut raw = vec![0u8; stride * h];
    for y in 0..h {
        raw[y * stride..][..w * 3].copy_from_slice(&frame.rgb()[y * w * 3..][..w * 3]);
    }
    raw
}

/// Build `aperture-device` with its feature `runtime` and the release profile (what images
/// ship) and return its path.
fn build_runtime(ws: &Path) -> Result<PathBuf> {
    eprintln!(
        "bench runtime: building aperture-device --features runtime with the release profile \
         (as images ship it; minutes the first time)"
    );
    crate::release_binary(
        ws,
        &["--package", "aperture-device", "--features", "runtime"],
        "aperture-device",
    )
}

/// The rtsp suite's RTSP server serving the golden frames, one mount per camera; killed when
/// dropped.
struct Server {
    child: Child,
    urls: Vec<String>,
}

impl Server {
    fn start(setup: &Setup, streams: usize) -> Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mounts: Vec<String> = (0..streams)
            .map(|i| {
                let (raw, w, h) = &setup.frames[i % setup.frames.len()];
                format!("cam{i}={}:{w}x{h}", raw.display())
            })
            .collect();
        let script = setup.ws.join("tests/rtsp/serve.py");
        let log = setup.work.join(format!("server-{streams}.log"));
        let mut child = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg("--lossless")
            .arg(port.to_string())
            .args(&mounts)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // x264's note that baseline cannot be lossless, among others.
            .stderr(fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", script.display()))?;
        let mut line = String::new();
        let read = BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .context("reading the RTSP server's first line");
        let server = Server {
            child,
            urls: (0..streams)
                .map(|i| format!("rtsp://127.0.0.1:{port}/cam{i}"))
                .collect(),
        };
        read?;
        if line.trim() != "ready" {
            bail!(
                "the RTSP server ({}) did not start: it needs python3-gi and \
                 gir1.2-gst-rtsp-server-1.0 (`sudo cargo xtask bench runtime` installs them); \
                 its log {}:\n{}",
                script.display(),
                log.display(),
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The 1-minute load average (other work on the machine shares its cores with the run).
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(String::from))
        .unwrap_or_else(|| "?".into())
}

fn report(
    setup: &Setup,
    results: &[&Measured],
    all: &[Measured],
    opts: &Options,
    load: [String; 2],
) {
    let header = [
        "runtime",
        "streams",
        "frames/s",
        "decoded/s",
        "latency p50 ms",
        "p95 ms",
        "peak RSS MiB",
        "CPU cores",
        "CPU ms/frame",
        "fps ours/theirs",
        "RSS theirs/ours",
    ];
    let rows: Vec<Row> = results
        .iter()
        .map(|m| {
            let peer = results
                .iter()
                .find(|p| p.streams == m.streams && p.side == Side::Python);
            let (fps_ratio, rss_ratio) = match (m.side, peer) {
                (Side::Aperture, Some(p)) => (
                    format!("{:.2}", m.fps() / p.fps()),
                    format!("{:.2}", p.peak_rss_mib() / m.peak_rss_mib()),
                ),
                _ => ("-".into(), "-".into()),
            };
            Row {
                name: m.side.name().into(),
                cells: vec![
                    m.streams.to_string(),
                    format!("{:.1}", m.fps()),
                    format!("{:.1}", m.decoded_per_second()),
                    format!("{:.1}", m.p50),
                    format!("{:.1}", m.p95),
                    format!("{:.0}", m.peak_rss_mib()),
                    format!("{:.2}", m.cpu_cores()),
                    format!("{:.1}", m.cpu_ms_per_frame()),
                    fps_ratio,
                    rss_ratio,
                ],
            }
        })
        .collect();
    print_table(
        "bench runtime: NanoDet-m (416 x 416) on RTSP streams of golden frames at 10 fps each",
        &header,
        &rows,
    );
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "\nBoth sides: model {} (sha256 {}), ONNX Runtime {} on the CPU, {} intra-op thread(s) \
         in one session (sequential, all graph optimisations, no memory pattern), frames over RTSP/TCP \
         decoded by OpenH264 (the runtime: compiled in; python: GStreamer's openh264dec), scaled \
         to 416 x 416, newest frame kept; each \
         side alone on the machine with a fresh RTSP server (tests/rtsp/serve.py --lossless: \
         x264 ultrafast at quantizer 0) as its only company; {} s warm-up, then {} s measured.",
        setup.manifest.model.name,
        &setup.manifest.model.sha256[..12],
        aperture_runtime::ONNXRUNTIME_VERSION,
        setup.intra_threads,
        opts.warmup.as_secs(),
        opts.window.as_secs(),
    );
    println!(
        "aperture-runtime: {} (aperture-device, release profile: thin LTO, 4 codegen units, \
         stripped; feature runtime), library {}.",
        setup.runtime.display(),
        setup.library.display()
    );
    println!(
        "python onnxruntime: {} {} with onnxruntime {} (the wheel's own build of the same \
         release), numpy; PyGObject from Debian.",
        setup.python.display(),
        setup.peer.display(),
        aperture_runtime::ONNXRUNTIME_VERSION
    );
    println!(
        "frames/s: frames inferred per second over the window; decoded/s: frames out of the \
         decoder (the rest were skipped while the model was busy). Latency: from a frame \
         leaving the appsink to its detections, over the last 1024 frames at the end of the \
         window{}. CPU cores: the process's CPU time (every thread: decoding too) over the \
         window; CPU ms/frame: that time per frame inferred, which other load on the machine \
         changes least. Peak RSS: VmHWM.",
        match results
            .iter()
            .filter(|m| m.samples_before_window() > 0)
            .count()
        {
            0 => String::new(),
            _ => format!(
                " (where fewer were inferred in the window, the warm-up's frames too: {})",
                results
                    .iter()
                    .filter(|m| m.samples_before_window() > 0)
                    .map(|m| format!(
                        "{} {}: {} of {}",
                        m.side.short(),
                        m.streams,
                        m.samples_before_window(),
                        m.samples
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    );
    if opts.runs > 1 {
        println!(
            "Each row is the run with the median frames/s of {} runs; all runs (frames/s, \
             CPU ms/frame, peak RSS MiB): {}.",
            opts.runs,
            all.iter()
                .map(|m| format!(
                    "{} {}: {:.1} {:.1} {:.0}",
                    m.side.short(),
                    m.streams,
                    m.fps(),
                    m.cpu_ms_per_frame(),
                    m.peak_rss_mib()
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    println!(
        "Checked: both sides' detections on the golden frames pass the runtime's self-test \
         (labels in order, boxes within 1 px, scores within 0.001); on every stream each side \
         gave every frame the same detections, the same as the other side's (corners within \
         0.05 px, scores within 0.001), with the golden object where the reference has it. Machine: {cores} cores, load \
         average {} before and {} after (other work shares the machine).",
        load[0], load[1]
    );
}
