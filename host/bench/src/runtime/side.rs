//! One side of `bench runtime` run and measured: start its process on the streams, wait until
//! every camera streams, warm up, read its metrics file and `/proc` at the start and the end of
//! the window, stop it with SIGTERM, and collect its detection lines.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::{Options, Setup};

/// The two sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `aperture-runtime`, release build.
    Aperture,
    /// `python/runtime_peer.py` with the onnxruntime Python package.
    Python,
}

impl Side {
    /// Its name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Side::Aperture => "aperture-runtime",
            Side::Python => "python onnxruntime",
        }
    }
    /// Its folder and short name.
    pub fn short(self) -> &'static str {
        match self {
            Side::Aperture => "aperture",
            Side::Python => "python",
        }
    }
}

/// One detection line, as both sides write them.
#[derive(Debug, Clone)]
pub struct Line {
    /// The frame's number on its camera.
    pub frame: u64,
    /// The class.
    pub label: String,
    /// Its score.
    pub score: f64,
    /// x1, y1, x2, y2 in the frame's pixels.
    pub bbox: [f64; 4],
}

/// One side on one stream count, measured.
#[derive(Debug)]
pub struct Measured {
    /// Which.
    pub side: Side,
    /// Streams.
    pub streams: usize,
    /// The window, by the metrics' own timestamps.
    pub seconds: f64,
    /// Frames inferred and decoded in the window.
    pub inferred: u64,
    /// Frames decoded in the window.
    pub decoded: u64,
    /// Latency percentiles at the end of the window.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// Frames behind the percentiles.
    pub samples: u64,
    /// VmHWM, KiB.
    pub peak_rss_kib: u64,
    /// CPU seconds (user and system, every thread) in the window.
    pub cpu_seconds: f64,
    /// Wall seconds between the two CPU readings.
    pub cpu_wall: f64,
    /// Detection lines by camera name.
    pub lines: BTreeMap<String, Vec<Line>>,
}

impl Measured {
    /// Frames inferred per second.
    pub fn fps(&self) -> f64 {
        self.inferred as f64 / self.seconds
    }
    /// Frames decoded per second.
    pub fn decoded_per_second(&self) -> f64 {
        self.decoded as f64 / self.seconds
    }
    /// Peak RSS in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.peak_rss_kib as f64 / 1024.0
    }
    /// Cores busy on average.
    pub fn cpu_cores(&self) -> f64 {
        self.cpu_seconds / self.cpu_wall
    }
    /// CPU milliseconds per frame inferred.
    pub fn cpu_ms_per_frame(&self) -> f64 {
        self.cpu_seconds * 1000.0 / self.inferred.max(1) as f64
    }
    /// Latency samples from before the window.
    pub fn samples_before_window(&self) -> u64 {
        self.samples.saturating_sub(self.inferred)
    }
}

/// A process of the run, killed and reaped on drop.
struct Process {
    child: Child,
    log: PathBuf,
    what: &'static str,
}

impl Process {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Fail, with its log, if it has exited.
    fn alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited early ({status}); its log {}:\n{}",
                self.what,
                self.log.display(),
                self.log_tail()
            );
        }
        Ok(())
    }

    /// SIGTERM, then at most 10 s for a clean exit.
    fn stop(mut self) -> Result<()> {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::Term);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                if !status.success() {
                    bail!(
                        "{} failed on SIGTERM ({status}); its log {}:\n{}",
                        self.what,
                        self.log.display(),
                        self.log_tail()
                    );
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{} did not stop within 10 s of SIGTERM", self.what);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Start `side` on `urls`: its process and the paths of its metrics and detection files.
fn start(setup: &Setup, side: Side, urls: &[String]) -> Result<(Process, PathBuf, Vec<PathBuf>)> {
    let dir = setup.work.join(format!("{}-{}", side.short(), urls.len()));
    // Fresh for each run: the runtime appends to its detection file, and frame numbers start
    // again with each run.
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let metrics = dir.join("runtime.json");
    let log = dir.join("log.txt");
    let (mut command, files) = match side {
        Side::Aperture => {
            let out = dir.join("out");
            let mut text = format!(
                "model = {:?}\nonnxruntime = {:?}\nsocket = {:?}\noutput_dir = {:?}\n\
                 metrics = {:?}\n",
                setup.manifest_path,
                setup.library,
                dir.join("detections.sock"),
                out,
                metrics
            );
            for (i, url) in urls.iter().enumerate() {
                text += &format!("[[camera]]\nname = \"cam{i}\"\nurl = {url:?}\n");
            }
            let config = dir.join("runtime.toml");
            fs::write(&config, text)?;
            let mut c = Command::new(&setup.runtime);
            c.arg("--config").arg(&config);
            // The rolled file first: its lines are the older ones.
            let files = vec![out.join("detections.jsonl.1"), out.join("detections.jsonl")];
            (c, files)
        }
        Side::Python => {
            let detections = dir.join("detections.jsonl");
            let mut c = Command::new(&setup.python);
            c.arg(&setup.peer)
                .arg("--manifest")
                .arg(&setup.manifest_path)
                .arg("--golden")
                .arg(setup.work.join("python-golden.json"))
                .arg("--metrics")
                .arg(&metrics)
                .arg("--detections")
                .arg(&detections)
                .arg("--threads")
                .arg(setup.intra_threads.to_string())
                .arg("--latency-ms")
                .arg("200")
                .args(urls);
            (c, vec![detections])
        }
    };
    let out = File::create(&log)?;
    let child = command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", side.name()))?;
    Ok((
        Process {
            child,
            log,
            what: side.name(),
        },
        metrics,
        files,
    ))
}

/// The metrics file, if it is there and whole.
fn read_metrics(path: &Path) -> Option<Value> {
    fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

fn cameras_streaming(m: &Value, n: usize) -> bool {
    m["cameras"].as_array().is_some_and(|c| {
        c.len() == n
            && c.iter()
                .all(|c| c["state"] == "streaming" && c["inferred"].as_u64() > Some(0))
    })
}

/// The newest metrics written after `after` (Unix ms), waiting at most 5 s.
fn metrics_after(process: &mut Process, path: &Path, after: u64) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        process.alive()?;
        if let Some(m) = read_metrics(path) {
            if m["updated_unix_ms"].as_u64() > Some(after) {
                return Ok(m);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{} has not rewritten {} for 5 s",
                process.what,
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// VmHWM of `/proc/PID/status`, in KiB.
fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmHWM in /proc/{pid}/status"))
}

/// User and system CPU seconds of every thread of `pid` (`/proc/PID/stat` fields 14 and 15,
/// in USER_HZ ticks).
fn cpu_seconds(pid: u32, ticks_per_second: f64) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("reading /proc/PID/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let ticks = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((ticks(14) + ticks(15)) as f64 / ticks_per_second)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn count(m: &Value, key: &str) -> u64 {
    m["frames"][key].as_u64().unwrap_or(0)
}

/// Run and measure `side` on `urls`.
pub fn measure(
    setup: &Setup,
    side: Side,
    streams: usize,
    urls: &[String],
    opts: &Options,
) -> Result<Measured> {
    let (mut process, metrics, files) = start(setup, side, urls)?;
    let limit = Duration::from_secs(90);
    let t = Instant::now();
    while !read_metrics(&metrics).is_some_and(|m| cameras_streaming(&m, streams)) {
        process.alive()?;
        if t.elapsed() > limit {
            bail!(
                "not every camera of {} was streaming within {limit:?}: {}",
                side.name(),
                read_metrics(&metrics).map_or("no metrics".into(), |m| m["cameras"].to_string())
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(opts.warmup);
    let ticks = clock_ticks();
    let m0 = metrics_after(&mut process, &metrics, unix_ms())?;
    let (cpu0, wall0) = (cpu_seconds(process.pid(), ticks)?, Instant::now());
    std::thread::sleep(opts.window);
    let m1 = metrics_after(&mut process, &metrics, unix_ms())?;
    let (cpu1, wall1) = (cpu_seconds(process.pid(), ticks)?, Instant::now());
    let peak = peak_rss_kib(process.pid())?;
    let log = process.log.clone();
    process.stop()?;
    // What each side says of itself: the runtime that it passed its golden self-test (it
    // refuses to start otherwise), the peer which onnxruntime it imported.
    let said = fs::read_to_string(&log).unwrap_or_default();
    let want = match side {
        Side::Aperture => "passed its self-test on".to_string(),
        Side::Python => format!(
            "runtime_peer: onnxruntime {}, ",
            aperture_runtime::ONNXRUNTIME_VERSION
        ),
    };
    if !said.contains(&want) {
        bail!(
            "{} did not say {want:?} ({}):\n{said}",
            side.name(),
            log.display()
        );
    }

    if let Some(bad) = m1["cameras"].as_array().and_then(|c| {
        c.iter().find(|c| {
            c["state"] != "streaming"
                || c["stalls"].as_u64() != Some(0)
                || c["failed"].as_u64().unwrap_or(0) > 0
        })
    }) {
        bail!(
            "{}: a camera did not stream steadily through the run: {bad}",
            side.name()
        );
    }
    let ms = |m: &Value| m["updated_unix_ms"].as_u64().unwrap_or(0);
    let lat = &m1["latency_ms"];
    Ok(Measured {
        side,
        streams,
        seconds: (ms(&m1) - ms(&m0)) as f64 / 1000.0,
        inferred: count(&m1, "inferred") - count(&m0, "inferred"),
        decoded: count(&m1, "decoded") - count(&m0, "decoded"),
        p50: lat["p50"]
            .as_f64()
            .context("no latency p50 in the metrics")?,
        p95: lat["p95"]
            .as_f64()
            .context("no latency p95 in the metrics")?,
        samples: lat["samples"].as_u64().unwrap_or(0),
        peak_rss_kib: peak,
        cpu_seconds: cpu1 - cpu0,
        cpu_wall: (wall1 - wall0).as_secs_f64(),
        lines: read_lines(&files)?,
    })
}

/// Detection lines by camera from `files` (those that exist), oldest first.
fn read_lines(files: &[PathBuf]) -> Result<BTreeMap<String, Vec<Line>>> {
    let mut by_camera: BTreeMap<String, Vec<Line>> = BTreeMap::new();
    for file in files.iter().filter(|f| f.exists()) {
        let text = fs::read_to_string(file)?;
        for (n, l) in text.lines().enumerate() {
            let v: Value = serde_json::from_str(l)
                .with_context(|| format!("{} line {}: not JSON", file.display(), n + 1))?;
            let b: Vec<f64> = v["box"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default();
            let (Some(cam), Some(frame), Some(label), Some(score), &[x1, y1, x2, y2]) = (
                v["camera"].as_str(),
                v["frame"].as_u64(),
                v["label"].as_str(),
                v["score"].as_f64(),
                &b[..],
            ) else {
                bail!("{} line {}: not a detection: {l}", file.display(), n + 1);
            };
            by_camera.entry(cam.to_string()).or_default().push(Line {
                frame,
                label: label.to_string(),
                score,
                bbox: [x1, y1, x2, y2],
            });
        }
    }
    Ok(by_camera)
}
