//! The offline security audit of a build (`cargo xtask audit DIR`, and the last step of every
//! build): it reads the ostree commit and the output folder, never a running appliance, and
//! judges them against the image's security policy ([`crate::security::Policy`]).
//!
//! It reports the firewall policy read back from the image's nftables.conf, the network
//! listeners units declare and the server programs present, setuid/setgid and world-writable
//! files, accounts with passwords or login shells, debug tools, consoles and update timers,
//! kernel hardening settings, the verity root on every boot entry's command line, and output
//! files the signed manifest does not cover. Each problem is a [`Finding`]: a violation
//! (the audit fails) or a note, always with the fix.

pub mod firewall;
pub mod nft;
mod outputs;
pub mod parse;
mod rootfs;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::security::Policy;
use crate::store::Store;

pub use rootfs::{Account, FileInfo, Listener};

/// Where the audit writes its report in an output folder (not signed: it is a statement
/// about the signed artifacts).
pub const REPORT: &str = "audit.json";

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The image breaks its policy: the audit fails.
    Violation,
    /// Worth knowing; the audit still passes.
    Note,
}

/// One thing the audit found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Violation or note.
    pub severity: Severity,
    /// The check: `firewall`, `listeners`, `setuid`, `world-writable`, `accounts`,
    /// `debug-tools`, `consoles`, `updates`, `sysctl`, `mounts`, `ssh`, `policy`, `boot`,
    /// `artifacts`.
    pub check: String,
    /// What it is about (a path, a unit, an account, a file).
    pub subject: String,
    /// What is wrong.
    pub problem: String,
    /// How to fix it.
    pub fix: String,
}

impl Finding {
    fn new(
        severity: Severity,
        check: &str,
        subject: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Finding {
            severity,
            check: check.into(),
            subject: subject.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
    /// A violation.
    pub fn violation(
        check: &str,
        subject: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::new(Severity::Violation, check, subject, problem, fix)
    }
    /// A note.
    pub fn note(
        check: &str,
        subject: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::new(Severity::Note, check, subject, problem, fix)
    }
    /// `VIOLATION [check] subject: problem` and the fix on the next line.
    pub fn to_text(&self) -> String {
        format!(
            "{} [{}] {}: {}\n      fix: {}",
            match self.severity {
                Severity::Violation => "VIOLATION",
                Severity::Note => "note",
            },
            self.check,
            self.subject,
            self.problem,
            self.fix
        )
    }
}

/// A boot entry as the audit read it from the ESP inside `disk.img`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BootEntry {
    /// Entry file on the ESP.
    pub file: String,
    /// The verity root hash on its command line.
    pub verity_root: Option<String>,
    /// Its whole command line.
    pub options: String,
}

/// How the audit classified a file of the output folder.
#[derive(Debug, Clone, Serialize)]
pub struct OutputFile {
    /// File name.
    pub name: String,
    /// `signed` (an artifact of the signed manifest), `manifest`, `known unsigned` or `unsigned`.
    pub status: String,
}

/// Everything the audit read and found.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    /// The output folder audited, if any.
    pub dir: Option<PathBuf>,
    /// The rootfs commit audited.
    pub commit: String,
    /// The policy the image was judged against.
    pub policy: Option<Policy>,
    /// Where the policy came from (`recipe` or the image's `/etc/aperture/security.json`).
    pub policy_source: String,
    /// The firewall as read back from `/etc/nftables.conf`.
    pub firewall: Option<firewall::Summary>,
    /// Network listeners declared by socket units, and server programs present.
    pub listeners: Vec<Listener>,
    /// setuid and setgid files.
    pub setid_files: Vec<FileInfo>,
    /// World-writable files and directories (sticky directories such as /tmp included).
    pub world_writable: Vec<FileInfo>,
    /// Every account, with its password state and shell.
    pub accounts: Vec<Account>,
    /// Debug tools and package managers present.
    pub debug_tools: Vec<String>,
    /// Boot entries of the disk image.
    pub boot_entries: Vec<BootEntry>,
    /// Files of the output folder.
    pub outputs: Vec<OutputFile>,
    /// Violations and notes, violations first.
    pub findings: Vec<Finding>,
}

/// The audit's verdict as an error the build and the CLI can return.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The image violates its policy.
    #[error("the security audit of {subject} found {} violation(s) of the image's security policy:\n{}", .findings.len(), list(.findings))]
    Violations {
        /// What was audited.
        subject: String,
        /// Every violation, with its fix.
        findings: Vec<Finding>,
    },
}

fn list(f: &[Finding]) -> String {
    f.iter()
        .map(|x| format!("  {}", x.to_text()))
        .collect::<Vec<_>>()
        .join("\n")
}

impl AuditReport {
    /// The violations.
    pub fn violations(&self) -> Vec<&Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Violation)
            .collect()
    }

    /// Whether the image passes.
    pub fn passed(&self) -> bool {
        self.violations().is_empty()
    }

    /// One line: passed or failed, with counts.
    pub fn summary(&self) -> String {
        let v = self.violations().len();
        let n = self.findings.len() - v;
        if v == 0 {
            format!("passed ({n} notes)")
        } else {
            format!("FAILED: {v} violations ({n} notes)")
        }
    }

    /// The report for people.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "audit of commit {}", self.commit);
        let _ = writeln!(s, "policy: {}", self.policy_source);
        if let Some(fw) = &self.firewall {
            let _ = writeln!(s, "firewall: {}", fw.policies.join(", "));
            let _ = writeln!(
                s,
                "  inbound allowed: {}",
                if fw.inbound.is_empty() {
                    "nothing".into()
                } else {
                    fw.inbound.join(", ")
                }
            );
            for o in &fw.outbound {
                let _ = writeln!(s, "  outbound allowed: {o}");
            }
            let _ = writeln!(s, "  counters: {}", fw.counters.join(", "));
        }
        let _ = writeln!(s, "listeners:");
        for l in &self.listeners {
            let _ = writeln!(s, "  {} {} ({})", l.unit, l.listen, l.state);
        }
        let _ = writeln!(s, "setuid/setgid files:");
        for f in &self.setid_files {
            let _ = writeln!(
                s,
                "  {:04o} {}:{} {}{}",
                f.mode,
                f.uid,
                f.gid,
                f.path,
                if f.allowed { " (allowlisted)" } else { "" }
            );
        }
        let _ = writeln!(
            s,
            "world-writable: {}",
            self.world_writable
                .iter()
                .map(|f| format!("{} {:04o}", f.path, f.mode))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(s, "accounts with a password or a login shell: {}", {
            let v: Vec<String> = self
                .accounts
                .iter()
                .filter(|a| a.password != parse::Password::Locked || a.login_shell)
                .map(|a| format!("{} ({:?}, {})", a.name, a.password, a.shell))
                .collect();
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        });
        let _ = writeln!(
            s,
            "debug tools and package managers: {}",
            if self.debug_tools.is_empty() {
                "none".into()
            } else {
                self.debug_tools.join(", ")
            }
        );
        for e in &self.boot_entries {
            let _ = writeln!(
                s,
                "boot entry {}: verity root {}",
                e.file,
                e.verity_root.as_deref().unwrap_or("MISSING")
            );
        }
        if !self.outputs.is_empty() {
            let _ = writeln!(
                s,
                "outputs: {}",
                self.outputs
                    .iter()
                    .map(|o| format!("{} ({})", o.name, o.status))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        for f in &self.findings {
            let _ = writeln!(s, "{}", f.to_text());
        }
        let _ = writeln!(s, "{}", self.summary());
        s
    }

    /// Write [`REPORT`] into `dir`.
    pub fn write_json(&self, dir: &Path) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(self)?;
        json.push(b'\n');
        let p = dir.join(REPORT);
        std::fs::write(&p, json).with_context(|| format!("writing {}", p.display()))
    }

    /// `Ok` when the image passes, else [`AuditError::Violations`] naming each one.
    pub fn into_result(self) -> Result<()> {
        if self.passed() {
            return Ok(());
        }
        let subject = match &self.dir {
            Some(d) => d.display().to_string(),
            None => format!("commit {}", self.commit),
        };
        Err(AuditError::Violations {
            subject,
            findings: self.violations().into_iter().cloned().collect(),
        }
        .into())
    }

    fn sort(&mut self) {
        self.findings.sort_by_key(|f| f.severity);
    }
}

/// Audit a rootfs commit (no output folder): everything but boot entries and artifacts.
/// `policy` is the recipe's when known; otherwise the image's own is used.
pub fn audit_commit(store: &Store, commit: &str, policy: Option<&Policy>) -> Result<AuditReport> {
    let mut r = rootfs::audit(store, commit, policy)?;
    r.sort();
    Ok(r)
}

/// Audit a build output folder: `build-report.json` there names the commit and the store.
pub fn audit_build(dir: &Path, policy: Option<&Policy>) -> Result<AuditReport> {
    audit_folder(dir, policy, false)
}

/// The audit a rootfs-only build runs on itself: the rootfs commit only. Outputs an earlier
/// build left in the folder belong to another commit and are not judged (`audit DIR` still
/// names them).
pub fn audit_rootfs_build(dir: &Path, policy: Option<&Policy>) -> Result<AuditReport> {
    audit_folder(dir, policy, true)
}

fn audit_folder(dir: &Path, policy: Option<&Policy>, rootfs_only: bool) -> Result<AuditReport> {
    let report_path = dir.join("build-report.json");
    let text = std::fs::read(&report_path).with_context(|| {
        format!(
            "reading {}: is {} a build output folder?",
            report_path.display(),
            dir.display()
        )
    })?;
    let v: serde_json::Value = serde_json::from_slice(&text)
        .with_context(|| format!("parsing {}", report_path.display()))?;
    let commit = v["rootfs"]["commit"]
        .as_str()
        .with_context(|| format!("{} names no rootfs commit", report_path.display()))?
        .to_string();
    // The store recorded at build time, else the usual place beside the output folder (the
    // output root may have moved).
    let mut candidates = Vec::new();
    if let Some(r) = v["paths"]["repo"].as_str() {
        candidates.push(PathBuf::from(r));
    }
    if let Ok(cache) = crate::pipeline::default_cache() {
        candidates.push(cache.join("repo"));
    }
    if let Some(parent) = dir.parent() {
        candidates.push(parent.join("repo"));
    }
    let repo =
        candidates
            .iter()
            .find(|p| p.join("config").exists())
            .with_context(|| {
                format!(
                "the build store of {} is not at {}; audit needs the store the build committed to",
                dir.display(),
                candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" or ")
            )
            })?;
    let store = Store::open(repo)?;
    let mut r = rootfs::audit(&store, &commit, policy)?;
    r.dir = Some(dir.to_path_buf());
    if !rootfs_only
        && (!v["outputs"].is_null() || dir.join(crate::outputs::names::MANIFEST).exists())
    {
        outputs::audit(dir, &commit, &mut r)?;
    } else {
        r.findings.push(Finding::note(
            "artifacts",
            dir.display().to_string(),
            "a rootfs-only build: no disk image, boot entries or signed manifest to check",
            "build without --rootfs-only for the full audit",
        ));
    }
    r.sort();
    Ok(r)
}
