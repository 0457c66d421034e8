//! `aperture-runtime detections [--config FILE] [--count N]`: read the detections the runtime
//! serves on its Unix socket and print them, one JSON line each, the way an application on
//! the appliance would read them. Who may: root, the runtime's own user and members of the
//! config's `socket_group` (`aperture-detections` in the image); anyone else is told which
//! group to join.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use clap::Parser;

use crate::config::Config;
use crate::model_cli::DEFAULT_CONFIG;

/// `aperture-runtime detections`.
#[derive(Debug, Parser)]
#[command(
    name = "aperture-runtime detections",
    about = "Print the runtime's detections as JSON lines, as they come"
)]
pub struct DetectionsArgs {
    /// The runtime's config (for `socket` and `socket_group`).
    #[arg(long, default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Stop after this many lines (default: until the runtime closes the socket or the
    /// program is stopped).
    #[arg(long)]
    pub count: Option<u64>,
}

/// `aperture-runtime detections ARGS...` (`args` starts with `detections`): the exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let parsed = match DetectionsArgs::try_parse_from(args) {
        Ok(p) => p,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let stdout = std::io::stdout();
    match run(&parsed, &mut stdout.lock()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("aperture-runtime detections: {e}");
            1
        }
    }
}

/// Connect and copy lines to `out` until `count` lines, or the end of the stream.
pub fn run(args: &DetectionsArgs, out: &mut dyn Write) -> Result<(), String> {
    // The config's own keys only: the cameras file it may name is root's alone, and who reads
    // detections needs none of it.
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| format!("reading the runtime config {}: {e}", args.config.display()))?;
    let config = Config::parse(&text, &args.config)?;
    let socket = &config.socket;
    let stream = UnixStream::connect(socket).map_err(|e| {
        let why = match (e.kind(), &config.socket_group) {
            (ErrorKind::PermissionDenied, Some(g)) => format!(
                ": only the runtime's user and members of group {g} may read detections \
                 (an application's unit: SupplementaryGroups={g}; a person: run it as root)"
            ),
            (ErrorKind::PermissionDenied, None) => {
                ": only the runtime's user may read detections (the config names no \
                 socket_group)"
                    .into()
            }
            (ErrorKind::NotFound | ErrorKind::ConnectionRefused, _) => {
                ": is aperture-runtime.service running? (systemctl status aperture-runtime)".into()
            }
            _ => String::new(),
        };
        format!("connecting to {}: {e}{why}", socket.display())
    })?;
    eprintln!(
        "aperture-runtime detections: reading from {}",
        socket.display()
    );
    let mut seen = 0u64;
    if args.count == Some(0) {
        return Ok(());
    }
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(|e| format!("reading {}: {e}", socket.display()))?;
        writeln!(out, "{line}").map_err(|e| format!("writing a line: {e}"))?;
        seen += 1;
        if args.count.is_some_and(|n| seen >= n) {
            return Ok(());
        }
    }
    match args.count {
        Some(n) => Err(format!(
            "the runtime closed {} after {seen} of {n} lines (it stopped or restarted)",
            socket.display()
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::SocketOut;

    fn config(dir: &std::path::Path, group: Option<&str>) -> PathBuf {
        let path = dir.join("runtime.toml");
        let group = group
            .map(|g| format!("socket_group = {g:?}\n"))
            .unwrap_or_default();
        std::fs::write(
            &path,
            format!(
                "model = \"m.toml\"\nonnxruntime = \"lib.so\"\nsocket = {:?}\n{group}\
                 output_dir = \"out\"\nmetrics = \"m.json\"\n",
                dir.join("d.sock")
            ),
        )
        .unwrap();
        path
    }

    #[test]
    fn it_prints_the_lines_it_is_sent_and_stops_at_its_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = config(dir.path(), None);
        let mut socket = SocketOut::bind(&dir.path().join("d.sock"), None).unwrap();
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            let args = DetectionsArgs {
                config: path,
                count: Some(2),
            };
            run(&args, &mut out).map(|()| out)
        });
        while socket.clients() == 0 {
            socket.accept();
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        for line in ["{\"a\":1}\n", "{\"b\":2}\n", "{\"c\":3}\n"] {
            socket.send(line.as_bytes());
        }
        let out = reader.join().unwrap().unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "{\"a\":1}\n{\"b\":2}\n");
    }

    #[test]
    fn a_runtime_that_is_not_there_or_goes_away_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let args = DetectionsArgs {
            config: config(dir.path(), Some("aperture-detections")),
            count: Some(1),
        };
        let e = run(&args, &mut Vec::new()).unwrap_err();
        assert!(
            e.contains("d.sock") && e.contains("systemctl status aperture-runtime"),
            "{e}"
        );
        let socket = SocketOut::bind(&dir.path().join("d.sock"), None).unwrap();
        let closer = std::thread::spawn(move || {
            let mut socket = socket;
            while socket.clients() == 0 {
                socket.accept();
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        });
        let e = run(&args, &mut Vec::new()).unwrap_err();
        closer.join().unwrap();
        assert!(e.contains("after 0 of 1 lines"), "{e}");
        let e = run(
            &DetectionsArgs {
                config: dir.path().join("none.toml"),
                count: None,
            },
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(e.contains("none.toml"), "{e}");
    }
}
