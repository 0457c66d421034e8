//! The one way this crate runs an external command (`lsblk`, `losetup`): stdin closed, output
//! captured, and on failure an error with the quoted command line and the tail of its stderr.
//! JSON output is parsed into typed structs by the caller ([`run_json`]).

use std::ffi::OsStr;
use std::process::{Command, Stdio};

use serde::de::DeserializeOwned;

use crate::error::{FlashError, Result};

/// How many lines of stderr an error keeps.
const STDERR_TAIL_LINES: usize = 12;

/// The command line as a shell would show it, for messages.
pub fn display(cmd: &Command) -> String {
    let mut shown = quote(cmd.get_program());
    for arg in cmd.get_args() {
        shown.push(' ');
        shown.push_str(&quote(arg));
    }
    shown
}

fn quote(arg: &OsStr) -> String {
    let arg = arg.to_string_lossy();
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c))
    {
        arg.into_owned()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

/// The last lines of a command's stderr.
fn tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
    lines[start..].join("\n")
}

/// Runs `cmd` with stdin closed and returns its stdout; a non-zero exit, or a command that
/// does not start, is a [`FlashError::Command`] naming the command line and its stderr tail.
pub fn run(cmd: &mut Command) -> Result<Vec<u8>> {
    let shown = display(cmd);
    let output = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| FlashError::Command {
            command: shown.clone(),
            status: format!("could not start: {e}"),
            stderr: String::new(),
        })?;
    if !output.status.success() {
        return Err(FlashError::Command {
            command: shown,
            status: output.status.to_string(),
            stderr: tail(&output.stderr),
        });
    }
    Ok(output.stdout)
}

/// Runs `cmd` and returns its stdout as trimmed text.
pub fn run_text(cmd: &mut Command) -> Result<String> {
    let shown = display(cmd);
    let stdout = run(cmd)?;
    String::from_utf8(stdout)
        .map(|s| s.trim().to_string())
        .map_err(|_| FlashError::parse(format!("output of `{shown}`"), "it is not UTF-8"))
}

/// Runs `cmd` and parses its stdout as JSON into `T`.
pub fn run_json<T: DeserializeOwned>(cmd: &mut Command) -> Result<T> {
    let shown = display(cmd);
    let stdout = run(cmd)?;
    serde_json::from_slice(&stdout)
        .map_err(|e| FlashError::parse(format!("output of `{shown}`"), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_what_a_shell_would_split() {
        let mut cmd = Command::new("lsblk");
        cmd.args(["-J", "-o", "NAME,PATH", "a b", "it's"]);
        assert_eq!(display(&cmd), "lsblk -J -o NAME,PATH 'a b' 'it'\\''s'");
    }

    #[test]
    fn failure_names_the_command_and_keeps_the_stderr_tail() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "for i in $(seq 1 30); do echo line$i >&2; done; exit 3",
        ]);
        let err = run(&mut cmd).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`sh -c "), "{text}");
        assert!(text.contains("exit status: 3"), "{text}");
        assert!(
            text.contains("line30") && !text.contains("line18\n"),
            "{text}"
        );
    }

    #[test]
    fn missing_program_says_it_did_not_start() {
        let err = run(&mut Command::new("/nonexistent/aperture-tool")).unwrap_err();
        assert!(err.to_string().contains("could not start"), "{err}");
    }

    #[test]
    fn json_output_is_parsed_or_named() {
        let v: serde_json::Value = run_json(Command::new("echo").arg("{\"a\": 1}")).unwrap();
        assert_eq!(v["a"], 1);
        let err = run_json::<serde_json::Value>(Command::new("echo").arg("nope")).unwrap_err();
        assert!(err.to_string().contains("output of `echo nope`"), "{err}");
    }
}
