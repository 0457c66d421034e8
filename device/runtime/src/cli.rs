//! `aperture-runtime --config FILE`: load the model, pass its golden self-test, tell systemd
//! `READY=1`, then run the cameras until SIGTERM or SIGINT, feeding systemd's watchdog from the
//! main loop (sd_notify(3) over `NOTIFY_SOCKET`, when systemd set it) when `WATCHDOG_USEC`
//! (and `WATCHDOG_PID`, if set) say it is this process's ([`crate::watchdog`]). The model is the store's
//! current one when it passes its self-test, else the built-in one ([`crate::models`]).
//!
//! `aperture-runtime model install|status|rollback ...`: the model store ([`crate::model_cli`]).
//! `aperture-runtime detections ...`: print the detections ([`crate::detections_cli`]).

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::config::Config;
use crate::models;
use crate::service;
use crate::source::rtsp::Rtsp;
use crate::watchdog::{Pace, Watchdog};
use crate::OnnxRuntime;

const USAGE: &str = "usage: aperture-runtime --config FILE [--self-test-frames N]\n       \
    aperture-runtime model install BUNDLE [--config FILE] [--no-restart]\n       \
    aperture-runtime model status [--config FILE] [--json]\n       \
    aperture-runtime model rollback [--config FILE] [--no-restart]\n       \
    aperture-runtime detections [--config FILE] [--count N]\n\
    --self-test-frames N: run the golden self-test on the first N frames only (test images \
    whose emulated CPU makes each inference take seconds); the default is every frame";

/// The program: its arguments (its name first) in, its exit code out.
pub fn main(args: Vec<OsString>) -> i32 {
    if args.get(1).is_some_and(|a| a == "model") {
        return crate::model_cli::main(args.into_iter().skip(1).collect());
    }
    if args.get(1).is_some_and(|a| a == "detections") {
        return crate::detections_cli::main(args.into_iter().skip(1).collect());
    }
    let args: Vec<String> = match args
        .into_iter()
        .skip(1)
        .map(OsString::into_string)
        .collect()
    {
        Ok(a) => a,
        Err(_) => {
            eprintln!("{USAGE}");
            return 2;
        }
    };
    let (config, frames) = match args.as_slice() {
        [flag, path] if flag == "--config" => (PathBuf::from(path), usize::MAX),
        [flag, path, n_flag, n] if flag == "--config" && n_flag == "--self-test-frames" => {
            match n.parse::<usize>() {
                Ok(n) if n >= 1 => (PathBuf::from(path), n),
                _ => {
                    eprintln!(
                        "aperture-runtime: --self-test-frames takes a number from 1\n{USAGE}"
                    );
                    return 2;
                }
            }
        }
        _ => {
            eprintln!("{USAGE}");
            return 2;
        }
    };
    match run(&config, frames) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("aperture-runtime: {e}");
            1
        }
    }
}

/// Send `state` to systemd, if it is listening.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = sent {
        eprintln!("aperture-runtime: telling systemd {state:?}: {e}");
    }
}

fn run(config_path: &std::path::Path, frames: usize) -> Result<(), String> {
    let config = Config::load(config_path)?;
    // What the environment and the system decide is checked before the model's self-test,
    // which can take minutes (a TensorRT engine build), so that a bad value fails at once.
    let watchdog = Watchdog::from_env()?;
    config.socket_gid()?;
    let ort = OnnxRuntime::load(&config.onnxruntime).map_err(|e| e.to_string())?;
    let options = crate::Options {
        providers: config.execution_providers.clone(),
        engine_cache: config.engine_cache_dir.clone(),
        ..crate::Options::default()
    };
    let started = models::start(&config, |path| {
        models::load_ort_with(ort, path, frames, &options)
    })?;
    let manifest = &started.manifest;
    eprintln!(
        "aperture-runtime: model {} ({}, {}) passed its self-test on {} golden frames; {} cameras",
        manifest.model.name,
        manifest.model.sha256,
        started.manifest_path.display(),
        started.frames,
        config.cameras.len()
    );
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("handling signal {sig}: {e}"))?;
    }
    let (w, h) = manifest.input.size();
    let mut model = started.info();
    model.execution_provider = started.detector.execution_provider().into();
    model.fallback = started.detector.fallback().is_some();
    let detector = started.detector;
    let connector = Arc::new(Rtsp);
    match watchdog {
        Some(w) => eprintln!(
            "aperture-runtime: feeding systemd's watchdog ({:?}) while every thread checks in",
            w.interval
        ),
        None => eprintln!("aperture-runtime: no watchdog asked for (WATCHDOG_USEC)"),
    }
    notify("READY=1");
    let r = service::run(
        &config,
        detector,
        model,
        (w as u32, h as u32),
        connector,
        stop,
        service::Health {
            pace: Pace::new(watchdog),
            alive: || {
                if watchdog.is_some() {
                    notify("WATCHDOG=1")
                }
            },
        },
    );
    notify("STOPPING=1");
    r
}
