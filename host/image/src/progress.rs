//! Named, timed build steps: each prints its name when it starts and its time when it ends, long
//! ones show their latest output line on a terminal (a heartbeat line otherwise), and everything
//! goes to the build log. Two steps may run at once (the Debian base and the device programs):
//! on a terminal each has its own line.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;

/// How a step ended.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    /// Step name.
    pub name: String,
    /// Seconds it took.
    pub seconds: f64,
    /// Whether its output was reused from an earlier build.
    pub reused: bool,
    /// One-line result.
    pub note: String,
}

/// Reports steps on stderr and in the build log.
pub struct Reporter {
    log: Mutex<Option<File>>,
    /// On a terminal: the running steps' lines, printed under what is said.
    bars: Option<MultiProgress>,
    records: Mutex<Vec<StepRecord>>,
}

/// Handed to a running step.
pub struct Step<'a> {
    reporter: &'a Reporter,
    name: String,
    bar: Option<ProgressBar>,
    last_plain: Mutex<Instant>,
    reused: Mutex<bool>,
    note: Mutex<String>,
}

impl Reporter {
    /// A reporter that also writes `log` (created or truncated).
    pub fn new(log: Option<&Path>) -> Result<Self> {
        let file = match log {
            Some(p) => Some(
                File::create(p).with_context(|| format!("creating build log {}", p.display()))?,
            ),
            None => None,
        };
        Ok(Reporter {
            log: Mutex::new(file),
            bars: std::io::stderr().is_terminal().then(MultiProgress::new),
            records: Mutex::new(Vec::new()),
        })
    }

    /// Start writing the log to a file (used once the output folder exists).
    pub fn set_log(&self, path: &Path) -> Result<()> {
        let f =
            File::create(path).with_context(|| format!("creating build log {}", path.display()))?;
        *self.log.lock().expect("log lock") = Some(f);
        Ok(())
    }

    /// Write a line to the build log only.
    pub fn log(&self, line: &str) {
        if let Some(f) = self.log.lock().expect("log lock").as_mut() {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Print a line on stderr and in the log.
    pub fn say(&self, line: &str) {
        match &self.bars {
            Some(m) => {
                if m.println(line).is_err() {
                    eprintln!("{line}");
                }
            }
            None => eprintln!("{line}"),
        }
        self.log(line);
    }

    /// Print a warning that must not be missed.
    pub fn warn_loud(&self, lines: &[&str]) {
        let bar = "!".repeat(78);
        self.say(&bar);
        for l in lines {
            self.say(&format!("!! {l}"));
        }
        self.say(&bar);
    }

    /// Run a named step.
    pub fn step<T>(&self, name: &str, f: impl FnOnce(&Step<'_>) -> Result<T>) -> Result<T> {
        self.say(&format!("==> {name}"));
        let bar = self.bars.as_ref().map(|m| {
            let b = m.add(ProgressBar::new_spinner());
            b.set_style(
                ProgressStyle::with_template("    {spinner} {elapsed:>4} {wide_msg}")
                    .expect("static template"),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        let step = Step {
            reporter: self,
            name: name.to_string(),
            bar,
            last_plain: Mutex::new(Instant::now()),
            reused: Mutex::new(false),
            note: Mutex::new(String::new()),
        };
        let start = Instant::now();
        let result = f(&step);
        if let (Some(b), Some(m)) = (&step.bar, &self.bars) {
            b.finish_and_clear();
            m.remove(b);
        }
        let secs = start.elapsed().as_secs_f64();
        let reused = *step.reused.lock().expect("lock");
        let note = step.note.lock().expect("lock").clone();
        match &result {
            Ok(_) => {
                let how = if reused { "reused" } else { "done" };
                let extra = if note.is_empty() {
                    String::new()
                } else {
                    format!(": {note}")
                };
                self.say(&format!("    {how} {name} in {secs:.1}s{extra}"));
                self.records.lock().expect("lock").push(StepRecord {
                    name: name.into(),
                    seconds: secs,
                    reused,
                    note,
                });
            }
            // The error itself is printed once, by the program's main.
            Err(_) => self.say(&format!("    FAILED {name} after {secs:.1}s")),
        }
        result.with_context(|| format!("build step `{name}`"))
    }

    /// Every finished step so far.
    pub fn records(&self) -> Vec<StepRecord> {
        self.records.lock().expect("lock").clone()
    }
}

impl Step<'_> {
    /// A line of output from the step's work: to the log, and as progress.
    pub fn line(&self, line: &str) {
        self.reporter.log(line);
        match &self.bar {
            Some(b) => b.set_message(line.chars().take(120).collect::<String>()),
            None => {
                // Not a terminal: a heartbeat at most every 10 s so CI logs show life.
                let mut last = self.last_plain.lock().expect("lock");
                if last.elapsed() >= Duration::from_secs(10) {
                    *last = Instant::now();
                    eprintln!(
                        "    ... {}: {}",
                        self.name,
                        line.chars().take(120).collect::<String>()
                    );
                }
            }
        }
    }

    /// Mark the step's output as reused from an earlier build.
    pub fn reused(&self) {
        *self.reused.lock().expect("lock") = true;
    }

    /// A one-line result shown when the step ends.
    pub fn note(&self, note: impl Into<String>) {
        *self.note.lock().expect("lock") = note.into();
    }

    /// The reporter (for loud warnings inside a step).
    pub fn reporter(&self) -> &Reporter {
        self.reporter
    }
}
