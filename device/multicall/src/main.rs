//! `aperture-device`: the device programs in one binary, as BusyBox does it. An image installs
//! it once as `/usr/bin/aperture-device` with a symbolic link for each program the recipe
//! asks for (`/usr/bin/aperture-agent -> aperture-device`, ...); run through a link, it is
//! that program. One binary instead of four links the shared crates (the updater, TLS, TUF,
//! zstd, clap) and runs link-time optimisation once: the image is about 10 MiB smaller and
//! the build about half as long.
//!
//! `aperture-device PROGRAM [ARGS...]` runs a program by name too.

use std::ffi::OsString;
use std::path::Path;

/// A program's entry point: its arguments (its name first) in, its exit code out.
type Main = fn(Vec<OsString>) -> i32;

/// The programs built in: (name, entry point).
const PROGRAMS: &[(&str, Main)] = &[
    #[cfg(feature = "agent")]
    ("aperture-agent", aperture_agent::cli::main),
    #[cfg(feature = "update")]
    ("aperture-update", aperture_updater::cli::main),
    #[cfg(feature = "storage")]
    ("aperture-storage", aperture_storage::cli::main),
    #[cfg(feature = "reset")]
    ("aperture-reset", aperture_reset::app::main),
    #[cfg(feature = "runtime")]
    ("aperture-runtime", aperture_runtime::cli::main),
];

const SELF: &str = "aperture-device";

fn main() {
    std::process::exit(dispatch(std::env::args_os().collect()));
}

/// Run the program `args` names: by the name this binary was run as, or, run as itself, by
/// its first argument.
fn dispatch(mut args: Vec<OsString>) -> i32 {
    let name = |a: &OsString| {
        Path::new(a)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mut program = args.first().map(name).unwrap_or_default();
    if program == SELF {
        args.remove(0);
        program = args.first().map(name).unwrap_or_default();
    }
    match PROGRAMS.iter().find(|(n, _)| *n == program) {
        Some((_, run)) => run(args),
        None => {
            eprintln!("{}", usage(&program));
            2
        }
    }
}

fn usage(asked: &str) -> String {
    let names: Vec<&str> = PROGRAMS.iter().map(|(n, _)| *n).collect();
    let what = if asked.is_empty() || asked == SELF {
        "no program named".to_string()
    } else {
        format!("`{asked}` is not one of its programs")
    };
    format!(
        "{SELF}: {what}. Run it as one of its programs (a link named after it) or as \
         `{SELF} PROGRAM [ARGS...]`; this build has: {}",
        if names.is_empty() {
            "none".to_string()
        } else {
            names.join(", ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn every_program_is_built_in_by_default() {
        let names: Vec<&str> = PROGRAMS.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "aperture-agent",
                "aperture-update",
                "aperture-storage",
                "aperture-reset"
            ]
        );
    }

    #[test]
    fn an_unknown_name_is_refused_with_the_list() {
        assert_eq!(dispatch(os(&["/usr/bin/aperture-nothing"])), 2);
        assert_eq!(dispatch(os(&["aperture-device", "nothing", "--help"])), 2);
        assert_eq!(dispatch(os(&["aperture-device"])), 2);
        let u = usage("aperture-nothing");
        assert!(
            u.contains("`aperture-nothing` is not one of its programs"),
            "{u}"
        );
        assert!(u.contains("aperture-agent, aperture-update"), "{u}");
    }
}
