//! The built binary, run through links named after each program as an image installs it.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_aperture-device");

fn run(exe: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(exe).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn each_link_runs_its_program() {
    let dir = tempfile::tempdir().unwrap();
    // What each program's --help names among its commands.
    for (name, command) in [
        ("aperture-agent", "update-loop"),
        ("aperture-update", "install"),
        ("aperture-storage", "setup"),
        ("aperture-reset", "resume"),
    ] {
        let link = dir.path().join(name);
        std::os::unix::fs::symlink(BIN, &link).unwrap();
        let (code, text) = run(&link, &["--help"]);
        assert_eq!(code, 0, "{name} --help: {text}");
        assert!(
            text.contains(name),
            "{name} --help does not name itself: {text}"
        );
        assert!(
            text.contains(command),
            "{name} --help lists no `{command}`: {text}"
        );
        // The same program by name, through the binary itself.
        let (code, by_name) = run(Path::new(BIN), &[name, "--help"]);
        assert_eq!((code, &by_name), (0, &text), "{name} by name");
    }
}

#[test]
fn a_wrong_name_says_how_to_run_it() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("aperture-other");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let (code, text) = run(&link, &["status"]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("`aperture-other` is not one of its programs"),
        "{text}"
    );
    assert!(text.contains("aperture-device PROGRAM"), "{text}");
    let (code, text) = run(Path::new(BIN), &[]);
    assert_eq!(code, 2, "{text}");
}
