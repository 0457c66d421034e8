//! The one helper that runs external commands (cryptsetup, mkfs, mount, tpm2-tools, mmdebstrap,
//! lsblk, ...): standard input is null or a piped secret, standard output is captured for typed
//! parsing (`lsblk -J`), and a failure carries the quoted command line and the tail of standard
//! error. Secrets never appear on a command line (they would be visible in `/proc/*/cmdline`).

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::process::{Command, Stdio};

/// A command that could not be run or did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("`{command}` failed ({status}){}{}", if stderr.is_empty() { "" } else { ": " }, stderr)]
pub struct CmdError {
    /// The command line, quoted.
    pub command: String,
    /// How it ended (`exit code 3`, `could not start: ...`).
    pub status: String,
    /// The tail of its standard error, on one line.
    pub stderr: String,
}

/// Lines of standard error kept in an error message.
const STDERR_TAIL_LINES: usize = 12;

/// What a finished command printed.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Standard output, raw.
    pub stdout: Vec<u8>,
    /// Standard error, lossy UTF-8.
    pub stderr: String,
}

impl Output {
    /// Standard output as (lossy) text.
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// An external command to run once.
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    stdin: Option<Vec<u8>>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

impl Cmd {
    /// `program` with no arguments.
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        Cmd {
            program: program.as_ref().to_os_string(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: None,
        }
    }

    /// Add one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Cmd {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// Add arguments.
    pub fn args<I, S>(mut self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Set an environment variable for the command.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Cmd {
        self.env
            .push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// Pipe `secret` into standard input (a key); it is overwritten in memory after use.
    pub fn stdin_secret(mut self, secret: &[u8]) -> Cmd {
        self.stdin = Some(secret.to_vec());
        self
    }

    /// The command line, each word shell-quoted where needed.
    pub fn display(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|w| quote(&w.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Run it; a non-zero exit is an error.
    pub fn run(self) -> Result<Output, CmdError> {
        let display = self.display();
        let out = self.output()?;
        if out.code == Some(0) {
            Ok(out)
        } else {
            Err(failure(display, &out))
        }
    }

    /// Run it and return whatever it exited with; only a failure to start is an error. For
    /// commands whose exit code is an answer (`evtest --query`).
    pub fn output(mut self) -> Result<Output, CmdError> {
        let display = self.display();
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|e| CmdError {
            command: display.clone(),
            status: format!("could not start: {e}; is the package providing it installed?"),
            stderr: String::new(),
        })?;
        if let (Some(mut secret), Some(mut pipe)) = (self.stdin.take(), child.stdin.take()) {
            // Secrets are small (a 64-byte key), far below the pipe buffer, so writing before
            // reading the output cannot deadlock. A write error shows up as the command's
            // own failure (it read a short key), reported below with its stderr.
            let _ = pipe.write_all(&secret);
            secret.fill(0);
            drop(pipe);
        }
        let out = child.wait_with_output().map_err(|e| CmdError {
            command: display.clone(),
            status: format!("could not wait for it: {e}"),
            stderr: String::new(),
        })?;
        Ok(Output {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// The error for a command that exited with failure.
pub fn failure(command: String, out: &Output) -> CmdError {
    CmdError {
        command,
        status: match out.code {
            Some(c) => format!("exit code {c}"),
            None => "killed by a signal".into(),
        },
        stderr: tail(&out.stderr),
    }
}

/// The last lines of a command's standard error, on one line.
pub fn tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
    lines[start..].join(" | ")
}

/// Quote a word for display the way a POSIX shell would need it.
pub fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_words_that_need_it() {
        let c = Cmd::new("cryptsetup")
            .arg("open")
            .arg("/dev/disk/by-partlabel/data")
            .arg("two words")
            .arg("it's");
        assert_eq!(
            c.display(),
            r"cryptsetup open /dev/disk/by-partlabel/data 'two words' 'it'\''s'"
        );
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn runs_and_captures_stdout_and_stdin() {
        let out = Cmd::new("sh")
            .args(["-c", "cat; echo done"])
            .stdin_secret(b"secret ")
            .run()
            .unwrap();
        assert_eq!(out.stdout_text(), "secret done\n");
    }

    #[test]
    fn stdin_is_null_without_a_secret() {
        let out = Cmd::new("sh").args(["-c", "cat | wc -c"]).run().unwrap();
        assert_eq!(out.stdout_text().trim(), "0");
    }

    #[test]
    fn failure_names_the_command_and_the_stderr_tail() {
        let script = "for i in $(seq 1 30); do echo line$i >&2; done; exit 3";
        let err = Cmd::new("sh").args(["-c", script]).run().unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`sh -c "), "{text}");
        assert!(text.contains("exit code 3"), "{text}");
        assert!(
            text.contains("line30") && !text.contains("line18 "),
            "{text}"
        );
    }

    #[test]
    fn missing_program_says_so() {
        let err = Cmd::new("aperture-no-such-tool").run().unwrap_err();
        assert!(err.to_string().contains("could not start"), "{err}");
    }

    #[test]
    fn output_returns_the_exit_code() {
        let out = Cmd::new("sh").args(["-c", "exit 10"]).output().unwrap();
        assert_eq!(out.code, Some(10));
    }
}
