//! The one helper that runs external commands (STYLE rule 9): stdin null, output captured, and
//! on failure to start an error with the quoted command line. Interpreting the exit status is
//! the caller's business (`systemctl is-active` exits non-zero for a unit that is not active).

use std::process::{Command, Output, Stdio};

/// A command could not be run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// It could not be started (missing program, permissions).
    #[error("running `{cmdline}`")]
    Spawn {
        /// The quoted command line.
        cmdline: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The command line, quoted where an argument needs it.
pub fn quote(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:@+".contains(c))
            {
                a.to_string()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run `program args...` with stdin null and stdout and stderr captured.
pub fn run(program: &str, args: &[&str]) -> Result<Output, CommandError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CommandError::Spawn {
            cmdline: quote(program, args),
            source,
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        tracing::debug!(
            "`{}` exited with {}: {}",
            quote(program, args),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(
            quote("systemctl", &["is-active", "a.service"]),
            "systemctl is-active a.service"
        );
        assert_eq!(quote("echo", &["it's", ""]), r"echo 'it'\''s' ''");
    }

    #[test]
    fn missing_program_names_the_command() {
        let err = run("/nonexistent/prog", &["x y"]).unwrap_err().to_string();
        assert!(err.contains("`/nonexistent/prog 'x y'`"), "{err}");
    }

    #[test]
    fn output_is_captured_whatever_the_exit_status() {
        let out = run("sh", &["-c", "echo inactive; exit 3"]).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "inactive");
        assert_eq!(out.status.code(), Some(3));
    }
}
