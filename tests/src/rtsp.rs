//! The camera the runtime's tests stream from: GStreamer's RTSP server (Debian's
//! gir1.2-gst-rtsp-server-1.0 through python3-gi, `tests/rtsp/serve.py`) on 127.0.0.1, one
//! H.264 stream per mount, each a still frame repeated at 10 fps. The tier-2 suite `rtsp`
//! connects to it from the host; `vm_runtime`'s guest connects through QEMU's user-mode
//! gateway (10.0.2.2), which reaches the host's 127.0.0.1.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};
use aperture_vision::Frame;

use crate::workspace;

const PYTHON: &str = "/usr/bin/python3";

/// Whether Debian's RTSP server and its Python bindings are there; when they are not, a test
/// skips with the reason, or fails under `cargo xtask test` (APERTURE_REQUIRE_TOOLS).
pub fn have_rtsp_server(suite: &str) -> bool {
    let ok = Command::new(PYTHON)
        .args([
            "-c",
            "import gi; gi.require_version('GstRtspServer', '1.0'); \
             from gi.repository import GstRtspServer",
        ])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let why = format!(
            "{suite}: python3-gi and gir1.2-gst-rtsp-server-1.0 are not installed; \
             `cargo xtask test` installs them as root"
        );
        if aperture_sys::tool::required() {
            panic!("APERTURE_REQUIRE_TOOLS=1 and a tool is missing: {why}");
        }
        eprintln!("SKIPPED: {why}");
    }
    ok
}

/// A golden frame of the committed model (`models/nanodet-m/golden/<name>.ppm`).
pub fn golden(name: &str) -> PathBuf {
    workspace()
        .join("models/nanodet-m/golden")
        .join(format!("{name}.ppm"))
}

/// Write the PPM `ppm` as the raw RGB `serve.py` streams (rows padded to 4 bytes) at `out`;
/// returns the mount argument `NAME=FILE:WxH` and the frame.
pub fn raw_frame(name: &str, ppm: &Path, out: &Path) -> Result<(String, Frame)> {
    let bytes = std::fs::read(ppm).with_context(|| format!("reading {}", ppm.display()))?;
    let frame = Frame::from_ppm(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", ppm.display()))?;
    let (fw, fh) = (frame.width() as usize, frame.height() as usize);
    let stride = (fw * 3).div_ceil(4) * 4;
    let mut raw = vec![0u8; stride * fh];
    for y in 0..fh {
        raw[y * stride..y * stride + fw * 3]
            .copy_from_slice(&frame.rgb()[y * fw * 3..(y + 1) * fw * 3]);
    }
    std::fs::write(out, raw).with_context(|| format!("writing {}", out.display()))?;
    Ok((format!("{name}={}:{fw}x{fh}", out.display()), frame))
}

/// The RTSP server, killed when dropped.
#[derive(Debug)]
pub struct RtspServer(Child);

impl RtspServer {
    /// Start it on 127.0.0.1:`port` with `mounts` (from [`raw_frame`]); returns once it listens.
    pub fn start(port: u16, mounts: &[String]) -> Result<RtspServer> {
        let mut child = Command::new(PYTHON)
            .arg(workspace().join("tests/rtsp/serve.py"))
            .arg(port.to_string())
            .args(mounts)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting tests/rtsp/serve.py")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .context("reading serve.py's first line")?;
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the RTSP server did not start on 127.0.0.1:{port} (it said {line:?})");
        }
        Ok(RtspServer(child))
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
