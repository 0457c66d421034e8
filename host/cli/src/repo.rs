//! `repo` and `release`: the fleet's TUF release repository (aperture-repo) from the command
//! line. Human output on stderr, `--json` on stdout.

use anyhow::{bail, Context, Result};
use aperture_image::outputs::names;
use aperture_release::Waves;
use aperture_repo::{sync, Published, Repo};

use crate::args::{ReleaseCommand, ReleaseHaltArgs, ReleasePublishArgs, RepoCommand};

/// Run `repo ...`.
pub fn run_repo(c: &RepoCommand) -> Result<()> {
    let now = jiff::Timestamp::now();
    match c {
        RepoCommand::Init(a) => {
            let repo = Repo::init(&a.out, a.release, now)?;
            eprintln!("made the TUF repository {}", a.out.display());
            print_status(&repo, now, false)
        }
        RepoCommand::Status(a) => print_status(&Repo::open(&a.repo)?, now, a.json),
        RepoCommand::Refresh(a) => {
            let mut repo = Repo::open(&a.repo)?;
            let done = repo.refresh(now, a.force, a.release)?;
            if done.is_empty() {
                eprintln!(
                    "{}: no role is due (each has more than half its validity left)",
                    a.repo.display()
                );
            } else {
                let names: Vec<&str> = done.iter().map(|r| r.name()).collect();
                eprintln!("{}: re-signed {}", a.repo.display(), names.join(", "));
            }
            Ok(())
        }
        RepoCommand::Sync(a) => {
            let to = a.to.to_string_lossy();
            if to.contains("://") {
                bail!("{to}: only a folder is supported as a sync destination so far (serve it with any web server)");
            }
            let done = sync::to_dir(&a.repo, &a.to)?;
            for f in &done.copied {
                eprintln!("  copied {f}");
            }
            eprintln!(
                "synced {} to {}: {} files copied, {} already there; the timestamp last",
                a.repo.display(),
                a.to.display(),
                done.copied.len(),
                done.kept
            );
            Ok(())
        }
        RepoCommand::Keygen(a) => {
            aperture_repo::keys::generate(&a.path, false)?;
            eprintln!(
                "made the Ed25519 key {} (mode 0600): list it in repo.toml and keep it offline",
                a.path.display()
            );
            Ok(())
        }
    }
}

/// Run `release ...`.
pub fn run_release(c: &ReleaseCommand) -> Result<()> {
    let now = jiff::Timestamp::now();
    match c {
        ReleaseCommand::Publish(a) => publish(a, now),
        ReleaseCommand::Halt(a) => halt(a, true, now),
        ReleaseCommand::Resume(a) => halt(a, false, now),
    }
}

fn publish(a: &ReleasePublishArgs, now: jiff::Timestamp) -> Result<()> {
    let waves: Waves = a
        .waves
        .parse()
        .with_context(|| format!("--waves {}", a.waves))?;
    let meta = aperture_image::verify::verified_release(
        &a.image,
        &a.channel,
        waves,
        aperture_trust::now_unix(),
    )?;
    let mut repo = Repo::open(&a.repo)?;
    match repo.publish(&a.image.join(names::BUNDLE), meta, now, a.release)? {
        Published::Added {
            name,
            targets_version,
        } => eprintln!(
            "published {name} (waves {}) in targets version {targets_version}; `aperture repo sync` puts it where devices look",
            a.waves
        ),
        Published::AlreadyThere { name } => {
            eprintln!("{name} is already published with these bytes: nothing changed")
        }
    }
    Ok(())
}

fn halt(a: &ReleaseHaltArgs, halted: bool, now: jiff::Timestamp) -> Result<()> {
    let version: semver::Version = a
        .version
        .parse()
        .with_context(|| format!("--version {}", a.version))?;
    let mut repo = Repo::open(&a.repo)?;
    let changed = repo.set_halted(&version, &a.channel, halted, now, a.release)?;
    let what = if halted { "halted" } else { "resumed" };
    if changed.is_empty() {
        eprintln!(
            "{version} on {} was already {what}: nothing changed",
            a.channel
        );
    } else {
        eprintln!(
            "{what} {}; sync the repository to reach devices",
            changed.join(", ")
        );
    }
    Ok(())
}

fn print_status(repo: &Repo, now: jiff::Timestamp, json: bool) -> Result<()> {
    let st = repo.status(now);
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
        return Ok(());
    }
    if st.development_keys {
        eprintln!("WARNING: this repository uses DEVELOPMENT keys (--release refuses them)");
    }
    println!(
        "{:<10} {:>7} {:<22} {:>10} {:>9}",
        "role", "version", "expires", "in days", "threshold"
    );
    for r in &st.roles {
        println!(
            "{:<10} {:>7} {:<22} {:>10.1} {:>9}",
            r.role,
            r.version,
            r.expires,
            r.expires_in_secs as f64 / 86_400.0,
            format!("{}/{}", r.threshold, r.keys.len())
        );
    }
    println!();
    println!(
        "{:<10} {:<12} {:<18} {:>12} {:<8} waves",
        "channel", "version", "board", "bytes", "state"
    );
    for t in &st.targets {
        match &t.release {
            Some(m) => println!(
                "{:<10} {:<12} {:<18} {:>12} {:<8} {}",
                m.channel,
                m.version.to_string(),
                m.board,
                t.length,
                if m.halted { "HALTED" } else { "live" },
                m.waves
            ),
            None => println!(
                "{:<10} {:<12} {:<18} {:>12} {:<8} {}",
                "-", "-", "-", t.length, "other", t.name
            ),
        }
    }
    if st.targets.is_empty() {
        println!(
            "(no releases yet: `aperture release publish --image DIR --repo REPO --channel NAME`)"
        );
    }
    Ok(())
}
