//! The one helper that runs external commands (cryptsetup, mkfs, mount, tpm2-tools, mmdebstrap,
//! lsblk, cargo, apt-get, ...): standard input is null or a piped secret, and a failure carries
//! the quoted command line, how it ended and the tail of what it printed. Secrets never appear
//! on a command line (they would be visible in `/proc/*/cmdline`).
//!
//! One builder, several ways to run it:
//! * [`Cmd::run`] / [`Cmd::output`]: capture both outputs;
//! * [`Cmd::text`] / [`Cmd::json`]: standard output as text, or parsed into a typed struct
//!   (`lsblk -J`, `sfdisk -J`);
//! * [`Cmd::stream`]: each line as it arrives, for long commands with progress (mmdebstrap);
//! * [`Cmd::run_inherited`]: the output goes straight to the terminal (cargo, apt-get).

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde::de::DeserializeOwned;

/// A command that could not be run or did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("`{command}` failed ({status}){}{}", if stderr.is_empty() { "" } else { ": " }, stderr)]
pub struct CmdError {
    /// The command line, quoted.
    pub command: String,
    /// How it ended (`exit code 3`, `could not start: ...`).
    pub status: String,
    /// The tail of its standard error (or of its standard output when it printed no error), on
    /// one line.
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
    env_removed: Vec<OsString>,
    dir: Option<PathBuf>,
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
            env_removed: Vec::new(),
            dir: None,
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

    /// Remove an environment variable the command would inherit.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> Cmd {
        self.env_removed.push(key.as_ref().to_os_string());
        self
    }

    /// Cargo (`$CARGO`, else `cargo` on the PATH) for a build started from inside another
    /// cargo run (a test, `cargo run`): without the variables cargo sets for the running
    /// package. Build scripts (ring's, through `cc`) rerun when those change, and a nested
    /// build that saw them would make the outer cargo rebuild ring and all that depends on it
    /// the next time, and the other way round: every test suite recompiling half the tree.
    pub fn cargo() -> Cmd {
        let mut c = Cmd::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        for (key, _) in std::env::vars_os() {
            if is_package_env(&key) {
                c = c.env_remove(key);
            }
        }
        c
    }

    /// The same command run through a wrapper, `program args... COMMAND ARGS...` (for example
    /// `unshare --net --`); its environment and folder are kept.
    pub fn wrapped<I, S>(mut self, program: impl AsRef<OsStr>, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut all: Vec<OsString> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        all.push(std::mem::replace(
            &mut self.program,
            program.as_ref().to_os_string(),
        ));
        all.append(&mut self.args);
        self.args = all;
        self
    }

    /// Run the command in `dir` instead of the current folder.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Cmd {
        self.dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Pipe `secret` into standard input (a key); it is overwritten in memory after use.
    pub fn stdin_secret(mut self, secret: &[u8]) -> Cmd {
        self.stdin = Some(secret.to_vec());
        self
    }

    /// The standard library's command for it (program, arguments, environment, folder), for
    /// a caller that manages the process itself (a build left running in the background).
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        for key in &self.env_removed {
            command.env_remove(key);
        }
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        command
    }

    /// The command line, each word shell-quoted where needed.
    pub fn display(&self) -> String {
        words(std::iter::once(self.program.as_os_str()).chain(self.args.iter().map(|a| &**a)))
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
    pub fn output(self) -> Result<Output, CmdError> {
        let display = self.display();
        let child = self.spawn(Stdio::piped(), Stdio::piped())?;
        let out = child
            .wait_with_output()
            .map_err(|e| not_waited(&display, e))?;
        Ok(Output {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Run it and return its standard output as text; output that is not UTF-8 is an error.
    pub fn text(self) -> Result<String, CmdError> {
        let display = self.display();
        let out = self.run()?;
        String::from_utf8(out.stdout).map_err(|_| CmdError {
            command: display,
            status: "its output is not UTF-8 text".into(),
            stderr: String::new(),
        })
    }

    /// Run it and parse its standard output as JSON into `T` (`lsblk -J`, `sfdisk -J`).
    pub fn json<T: DeserializeOwned>(self) -> Result<T, CmdError> {
        let display = self.display();
        let out = self.run()?;
        serde_json::from_slice(&out.stdout).map_err(|e| CmdError {
            command: display,
            status: format!("its output is not the JSON expected: {e}"),
            stderr: String::new(),
        })
    }

    /// Run it with standard output and error going where ours go (the terminal), for commands
    /// whose progress the user watches (`cargo`, `apt-get`). A failure names the command and
    /// how it ended; what it printed is already on screen.
    pub fn run_inherited(self) -> Result<(), CmdError> {
        let display = self.display();
        let mut child = self.spawn(Stdio::inherit(), Stdio::inherit())?;
        let status = child.wait().map_err(|e| not_waited(&display, e))?;
        exited(display, status.code(), "")
    }

    /// Run a long command, passing each line it prints (standard output and error merged, in
    /// the order written) to `line` as it arrives: for a build log and progress. A failure
    /// carries the last lines printed.
    pub fn stream(self, mut line: impl FnMut(&str)) -> Result<(), CmdError> {
        let display = self.display();
        let (reader, writer) = std::io::pipe().map_err(|e| not_started(&display, e))?;
        let writer2 = writer.try_clone().map_err(|e| not_started(&display, e))?;
        // `spawn` drops its `Command`, and with it our copies of the write ends, so the reader
        // sees end-of-file when the child (and anything it left running) exits.
        let mut child = self.spawn(writer.into(), writer2.into())?;
        let mut last: Vec<String> = Vec::new();
        let mut reader = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(CmdError {
                        command: display,
                        status: format!("could not read its output: {e}"),
                        stderr: tail(&last.join("\n")),
                    });
                }
            }
            let text = String::from_utf8_lossy(&buf);
            let text = text.trim_end();
            line(text);
            // Twice the tail, as blank lines are dropped from it.
            if last.len() == 2 * STDERR_TAIL_LINES {
                last.remove(0);
            }
            last.push(text.to_string());
        }
        let status = child.wait().map_err(|e| not_waited(&display, e))?;
        exited(display, status.code(), &last.join("\n"))
    }

    /// Start the command with standard input null (or the secret piped in) and the given
    /// standard output and error.
    fn spawn(mut self, stdout: Stdio, stderr: Stdio) -> Result<Child, CmdError> {
        let shown = self.display();
        #[cfg(feature = "log")]
        tracing::debug!("running {shown}");
        let mut command = self.command();
        command
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(stdout)
            .stderr(stderr);
        let mut child = command.spawn().map_err(|e| CmdError {
            command: shown,
            status: format!("could not start: {e}; is the package providing it installed?"),
            stderr: String::new(),
        })?;
        if let (Some(mut secret), Some(mut pipe)) = (self.stdin.take(), child.stdin.take()) {
            // Secrets are small (a 64-byte key), far below the pipe buffer, so writing before
            // reading the output cannot deadlock. A write error shows up as the command's
            // own failure (it read a short key), reported with its stderr.
            let _ = pipe.write_all(&secret);
            secret.fill(0);
        }
        Ok(child)
    }
}

/// How a command ended, for [`CmdError::status`].
fn ended(code: Option<i32>) -> String {
    match code {
        Some(c) => format!("exit code {c}"),
        None => "killed by a signal".into(),
    }
}

/// `Ok` for exit code 0; otherwise the error naming how it ended and the tail of `printed`.
fn exited(command: String, code: Option<i32>, printed: &str) -> Result<(), CmdError> {
    if code == Some(0) {
        return Ok(());
    }
    Err(CmdError {
        command,
        status: ended(code),
        stderr: tail(printed),
    })
}

fn not_started(command: &str, e: std::io::Error) -> CmdError {
    CmdError {
        command: command.to_string(),
        status: format!("could not start: {e}"),
        stderr: String::new(),
    }
}

fn not_waited(command: &str, e: std::io::Error) -> CmdError {
    CmdError {
        command: command.to_string(),
        status: format!("could not wait for it: {e}"),
        stderr: String::new(),
    }
}

/// Whether `key` is one of the variables cargo sets for the package it builds or runs
/// (cargo(1) "Environment variables Cargo sets for crates" and for build scripts).
pub fn is_package_env(key: &OsStr) -> bool {
    let Some(k) = key.to_str() else {
        return false;
    };
    k.starts_with("CARGO_PKG_")
        || k.starts_with("CARGO_MANIFEST_")
        || k.starts_with("CARGO_BIN_")
        || k.starts_with("CARGO_CFG_")
        || [
            "CARGO_CRATE_NAME",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
            "OUT_DIR",
        ]
        .contains(&k)
}

/// The error for a command that exited with failure: the tail of its standard error, or of its
/// standard output when it printed no error (some tools report failures there).
pub fn failure(command: String, out: &Output) -> CmdError {
    let printed = if out.stderr.trim().is_empty() {
        out.stdout_text()
    } else {
        out.stderr.clone()
    };
    CmdError {
        command,
        status: ended(out.code),
        stderr: tail(&printed),
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

/// The command line of a [`std::process::Command`], quoted like [`Cmd::display`]: for the
/// long-running children whose pipes the caller manages itself (QEMU, swtpm).
pub fn command_line(command: &Command) -> String {
    words(std::iter::once(command.get_program()).chain(command.get_args()))
}

/// Words joined by spaces, each quoted where a shell needs it.
fn words<'a>(words: impl Iterator<Item = &'a OsStr>) -> String {
    words
        .map(|w| quote(&w.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
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
    fn a_wrapped_command_runs_through_its_wrapper_with_its_environment() {
        let c = Cmd::new("sh")
            .args(["-c", "echo \"$1 $X\"", "sh"])
            .env("X", "kept")
            .wrapped("env", ["A=1"])
            .arg("two");
        assert_eq!(c.display(), "env A=1 sh -c 'echo \"$1 $X\"' sh two");
        assert_eq!(c.text().unwrap().trim(), "two kept");
    }

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
    fn a_nested_cargo_does_not_inherit_the_running_packages_variables() {
        // `cargo test` runs this test with the variables of the aperture-sys package set.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        assert!(std::env::var_os("CARGO_PKG_NAME").is_some());
        let mut c = Cmd::cargo();
        c.program = "sh".into();
        let out = c
            .args([
                "-c",
                "echo \"${CARGO_MANIFEST_DIR-unset} ${CARGO_PKG_NAME-unset} ${PATH:+path}\"",
            ])
            .text()
            .unwrap();
        assert_eq!(out.trim(), "unset unset path");
        for kept in [
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_INCREMENTAL",
            "PATH",
        ] {
            assert!(!is_package_env(OsStr::new(kept)), "{kept}");
        }
        for removed in ["CARGO_PKG_VERSION_MAJOR", "CARGO_MANIFEST_LINKS", "OUT_DIR"] {
            assert!(is_package_env(OsStr::new(removed)), "{removed}");
        }
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

    #[test]
    fn failure_without_stderr_shows_the_stdout_tail() {
        let err = Cmd::new("sh")
            .args(["-c", "echo 'Disk full' ; exit 1"])
            .run()
            .unwrap_err();
        assert_eq!(err.stderr, "Disk full");
    }

    #[test]
    fn current_dir_and_env_reach_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let text = Cmd::new("sh")
            .args(["-c", "pwd; echo $APERTURE_X"])
            .current_dir(dir.path())
            .env("APERTURE_X", "y")
            .text()
            .unwrap();
        let want = format!("{}\ny\n", dir.path().canonicalize().unwrap().display());
        assert_eq!(text, want);
    }

    #[test]
    fn text_refuses_output_that_is_not_utf8() {
        let err = Cmd::new("printf").arg(r"\377").text().unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
        assert!(err.command.starts_with("printf "), "{err}");
    }

    #[derive(Debug, serde::Deserialize)]
    struct Disk {
        name: String,
        size: u64,
    }

    #[test]
    fn json_parses_into_a_typed_struct_or_names_the_command() {
        let disk: Disk = Cmd::new("echo")
            .arg(r#"{"name": "vda", "size": 4096}"#)
            .json()
            .unwrap();
        assert_eq!((disk.name.as_str(), disk.size), ("vda", 4096));
        let err = Cmd::new("echo")
            .arg(r#"{"name": "vda"}"#)
            .json::<Disk>()
            .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("`echo "), "{text}");
        assert!(text.contains("missing field `size`"), "{text}");
        // A failed command is reported as such, not as bad JSON.
        let err = Cmd::new("false").json::<Disk>().unwrap_err();
        assert_eq!(err.status, "exit code 1");
    }

    #[test]
    fn run_inherited_reports_the_exit_code() {
        Cmd::new("true").run_inherited().unwrap();
        let err = Cmd::new("sh")
            .args(["-c", "exit 4"])
            .run_inherited()
            .unwrap_err();
        assert_eq!(err.to_string(), "`sh -c 'exit 4'` failed (exit code 4)");
        let err = Cmd::new("aperture-no-such-tool")
            .run_inherited()
            .unwrap_err();
        assert!(err.status.starts_with("could not start"), "{err}");
    }

    #[test]
    fn stream_passes_merged_lines_in_order() {
        let mut seen = Vec::new();
        Cmd::new("sh")
            .args(["-c", "echo one; echo two >&2; printf three"])
            .stream(|l| seen.push(l.to_string()))
            .unwrap();
        assert_eq!(seen, ["one", "two", "three"]);
    }

    #[test]
    fn stream_failure_keeps_the_last_lines() {
        let script = "for i in $(seq 1 40); do echo out$i; echo >&2; done; exit 7";
        let mut count = 0;
        let err = Cmd::new("sh")
            .args(["-c", script])
            .stream(|_| count += 1)
            .unwrap_err();
        assert_eq!(count, 80);
        assert_eq!(err.status, "exit code 7");
        assert!(err.stderr.ends_with("out39 | out40"), "{err}");
        assert!(err.stderr.starts_with("out29 |"), "{err}");
    }

    #[test]
    fn stream_ends_when_the_command_exits() {
        // The write ends must not stay open in this process, or reading would never end.
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || done.send(Cmd::new("true").stream(|_| {})));
        let result = finished.recv_timeout(std::time::Duration::from_secs(20));
        assert!(matches!(result, Ok(Ok(()))), "{result:?}");
    }

    #[test]
    fn command_line_quotes_a_std_command_like_cmd() {
        let mut c = Command::new("qemu-system-x86_64");
        c.args(["-drive", "file=a b.img"]);
        assert_eq!(command_line(&c), "qemu-system-x86_64 -drive 'file=a b.img'");
    }
}
