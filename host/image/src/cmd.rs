//! The one helper that runs external commands (mmdebstrap, mkfs.erofs, mcopy, cargo, ...):
//! stdin closed, the quoted command line and the tail of stderr in every error, output
//! optionally streamed to the build log.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The command line as a shell would show it.
pub fn display(cmd: &Command) -> String {
    let mut s = quote(cmd.get_program());
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&quote(a));
    }
    s
}

fn quote(a: &OsStr) -> String {
    let a = a.to_string_lossy();
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        a.into_owned()
    } else {
        format!("'{}'", a.replace('\'', "'\\''"))
    }
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Run a command, capture its output, and fail with the command line and the end of stderr.
pub fn output(cmd: &mut Command) -> Result<std::process::Output> {
    let shown = display(cmd);
    tracing::debug!("running {shown}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{shown}` (is it installed?)"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let o = String::from_utf8_lossy(&out.stdout);
        let detail = if err.trim().is_empty() {
            tail(&o, 20)
        } else {
            tail(&err, 20)
        };
        bail!("`{shown}` failed ({}):\n{detail}", out.status);
    }
    Ok(out)
}

/// Run a command and return its stdout as text.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    String::from_utf8(out.stdout).context("command printed non-UTF-8 output")
}

/// Run a command and parse its stdout as JSON into `T` (for `lsblk -J`, `sfdisk -J`, ...).
pub fn json<T: serde::de::DeserializeOwned>(cmd: &mut Command) -> Result<T> {
    let shown = display(cmd);
    let text = stdout(cmd)?;
    serde_json::from_str(&text).with_context(|| format!("parsing the JSON that `{shown}` printed"))
}

/// Run a long command, passing each line of its output (stdout and stderr merged) to `line`
/// as it arrives (for the build log and progress). Fails with the last lines of output.
pub fn stream(cmd: &mut Command, mut line: impl FnMut(&str)) -> Result<()> {
    let shown = display(cmd);
    tracing::debug!("running {shown}");
    let (reader, writer) = std::io::pipe().context("creating a pipe")?;
    let writer2 = writer.try_clone().context("duplicating a pipe")?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2)
        .spawn()
        .with_context(|| format!("could not start `{shown}` (is it installed?)"))?;
    // The Command still owns our copies of the write ends: replace them so that the reader
    // sees end-of-file when the child exits.
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut last: Vec<String> = Vec::new();
    let mut r = BufReader::new(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = r
            .read_until(b'\n', &mut buf)
            .context("reading command output")?;
        if n == 0 {
            break;
        }
        let l = String::from_utf8_lossy(&buf);
        let l = l.trim_end();
        line(l);
        last.push(l.to_string());
        if last.len() > 30 {
            last.remove(0);
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status}):\n{}", last.join("\n"));
    }
    Ok(())
}
