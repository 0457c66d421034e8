//! `repo` and `release`: the fleet's TUF release repository (aperture-repo) from the command
//! line. Human output on stderr, `--json` on stdout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use aperture_image::outputs::names;
use aperture_release::Waves;
use aperture_repo::s3::{S3Settings, S3Url};
use aperture_repo::{s3, sync, Published, Repo, Role};

use crate::args::{
    ReleaseCommand, ReleaseHaltArgs, ReleasePublishArgs, RepoCommand, RepoRotateRootArgs,
    RepoSyncArgs,
};

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
            let mut repo = Repo::open_to_change(&a.repo)?;
            let mut done: Vec<&str> = repo
                .refresh(now, a.force, a.release)?
                .iter()
                .map(|r| r.name())
                .collect();
            if repo.refresh_rollouts(now, a.force, a.release)? {
                done.push("rollouts");
                for role in ["snapshot", "timestamp"] {
                    if !done.contains(&role) {
                        done.push(role);
                    }
                }
            }
            if done.is_empty() {
                eprintln!(
                    "{}: no role is due (each has more than half its validity left)",
                    a.repo.display()
                );
            } else {
                eprintln!("{}: re-signed {}", a.repo.display(), done.join(", "));
            }
            Ok(())
        }
        RepoCommand::DelegateRollouts(a) => {
            let mut repo = Repo::open_to_change(&a.repo)?;
            if repo.delegate_rollouts(now, a.release)? {
                eprintln!(
                    "{}: the targets role delegates `rollouts` (target names rollouts/*/*) to the \
                     key(s) in repo.toml's [rollouts]; give them to the fleet server, which signs \
                     rollout states with them",
                    a.repo.display()
                );
            } else {
                eprintln!("{}: `rollouts` is delegated already", a.repo.display());
            }
            Ok(())
        }
        RepoCommand::RotateRoot(a) => rotate_root(a, now),
        RepoCommand::Sync(a) => sync_repo(a),
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

fn sync_repo(a: &RepoSyncArgs) -> Result<()> {
    if !a.to.starts_with("s3://") {
        if a.to.contains("://") {
            bail!(
                "{}: a sync destination is a folder (that a web server serves) or \
                 s3://BUCKET/PREFIX",
                a.to
            );
        }
        if a.endpoint.is_some() {
            bail!("--endpoint names an S3 server: use it with --to s3://BUCKET/PREFIX");
        }
        let done = sync::to_dir(&a.repo, Path::new(&a.to))?;
        for f in &done.copied {
            eprintln!("  copied {f}");
        }
        eprintln!(
            "synced {} to {}: {} files copied, {} already there; the timestamp last",
            a.repo.display(),
            a.to,
            done.copied.len(),
            done.kept
        );
        return Ok(());
    }
    let dest: S3Url = a.to.parse()?;
    let settings = S3Settings::from_env(a.endpoint.as_deref())?;
    if settings.plain_http_remote() {
        eprintln!(
            "WARNING: {} is plain HTTP to another machine: the repository travels unencrypted \
             (TUF's signatures still protect devices, but not the bucket)",
            settings.endpoint_name()
        );
    }
    eprintln!(
        "syncing {} to {dest} at {}",
        a.repo.display(),
        settings.endpoint_name()
    );
    let done = s3::to_s3(&a.repo, &dest, &settings, &mut |p| {
        if p.sent == p.total {
            eprintln!("  uploaded {} ({})", p.path, size(p.total));
        } else {
            eprintln!(
                "  {}: {} of {} ({}%)",
                p.path,
                size(p.sent),
                size(p.total),
                p.sent * 100 / p.total.max(1)
            );
        }
    })?;
    eprintln!(
        "synced {} to {dest}: {} objects uploaded, {} already there; timestamp.json last",
        a.repo.display(),
        done.copied.len(),
        done.kept
    );
    Ok(())
}

fn size(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{bytes} bytes")
    } else {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    }
}

fn rotate_root(a: &RepoRotateRootArgs, now: jiff::Timestamp) -> Result<()> {
    let mut new_keys: HashMap<Role, Vec<PathBuf>> = HashMap::new();
    for (role, file) in &a.keys {
        // repo.toml names keys relative to the repository; a key given here is named as a
        // whole path.
        let path = std::fs::canonicalize(file).with_context(|| {
            format!(
                "--key {}={}: make the key first (`aperture repo keygen {}`)",
                role.name(),
                file.display(),
                file.display()
            )
        })?;
        new_keys.entry(*role).or_default().push(path);
    }
    let mut repo = Repo::open_to_change(&a.repo)?;
    let done = repo.rotate_root(&a.rotate, &new_keys, now, a.release)?;
    eprintln!(
        "{}: root version {}, signed by the old and the new root keys",
        a.repo.display(),
        done.root_version
    );
    let list = |paths: &[PathBuf]| {
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for ((role, new), (_, old)) in done.new_keys.iter().zip(&done.retired) {
        eprintln!("  {} keys: {} (were {})", role.name(), list(new), list(old));
    }
    if !done.resigned.is_empty() {
        let names: Vec<&str> = done.resigned.iter().map(|r| r.name()).collect();
        eprintln!("  re-signed {} with the new keys", names.join(", "));
    }
    eprintln!(
        "  repo.toml names the new keys; the retired key files are left where they were: keep \
         them offline or destroy them. `aperture repo sync` publishes the new root, and devices \
         follow it on their next poll"
    );
    Ok(())
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
    let mut meta = aperture_image::verify::verified_release(
        &a.image,
        &a.channel,
        waves,
        aperture_trust::now_unix(),
    )?;
    let mut repo = Repo::open_to_change(&a.repo)?;
    if a.gate_on_rollout {
        if !repo.rollouts_delegated() {
            bail!(
                "--gate-on-rollout: {} has no rollouts role, so no device could ever install \
                 this release; delegate it first (`aperture repo delegate-rollouts --repo {}`)",
                a.repo.display(),
                a.repo.display()
            );
        }
        meta.gate = aperture_release::Gate::Rollout;
    }
    match repo.publish(&a.image.join(names::BUNDLE), meta.clone(), now, a.release)? {
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
    publish_deltas(a, &mut repo, &meta, now)
}

/// The delta bundles of a release: the ones its build folder holds (`cargo xtask bundle
/// --from`), then one from each of the repository's newest earlier releases on the channel
/// (`[deltas] from_last`) that has none yet, made from the full bundle the repository keeps.
fn publish_deltas(
    a: &ReleasePublishArgs,
    repo: &mut Repo,
    meta: &aperture_release::ReleaseMeta,
    now: jiff::Timestamp,
) -> Result<()> {
    use aperture_image::bundle::{bundle_manifest, extract_bundle, make_delta_bundle_from};
    use aperture_release::DeltaMeta;
    use aperture_trust::manifest::Manifest;

    let root = aperture_trust::keys::PublicKey::load(&a.image.join(names::ROOT_PUB))?;
    let delta_meta = |m: &Manifest| -> Result<DeltaMeta> {
        let base = m
            .payload_artifacts()
            .find_map(|x| x.payload.as_ref()?.base.as_ref())
            .context("it has no delta payload")?;
        if (&m.product, &m.board, &m.version) != (&meta.product, &meta.board, &meta.version) {
            bail!(
                "it is {} {} for {}, not this release",
                m.product,
                m.version,
                m.board
            );
        }
        Ok(DeltaMeta {
            product: m.product.clone(),
            board: m.board.clone(),
            version: m.version.clone(),
            channel: meta.channel.clone(),
            from: base.version.clone(),
            from_root_hash: base.root_hash.to_string(),
        })
    };
    let publish = |repo: &mut Repo, path: &Path, d: DeltaMeta| -> Result<()> {
        let size = std::fs::metadata(path)?.len();
        match repo.publish_delta(path, d, now, a.release)? {
            Published::Added { name, .. } => eprintln!(
                "published {name}: {:.2} MiB, for devices running its base",
                size as f64 / (1u64 << 20) as f64
            ),
            Published::AlreadyThere { name } => {
                eprintln!("{name} is already published with these bytes")
            }
        }
        Ok(())
    };

    let mut covered = Vec::new();
    let mut made: Vec<PathBuf> = std::fs::read_dir(&a.image)
        .with_context(|| format!("reading {}", a.image.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("update-from-") && n.ends_with(".bundle"))
        })
        .collect();
    made.sort();
    for path in made {
        let d = bundle_manifest(&path, &root)
            .and_then(|m| delta_meta(&m))
            .with_context(|| format!("{} is not a delta bundle of this release", path.display()))?;
        covered.push(d.from.clone());
        publish(repo, &path, d)?;
    }

    let from_last = repo.config().deltas.from_last as usize;
    let mut earlier: Vec<(String, aperture_release::ReleaseMeta)> = repo
        .releases()
        .into_iter()
        .filter(|(_, r)| {
            (&r.product, &r.board, &r.channel) == (&meta.product, &meta.board, &meta.channel)
                && r.version < meta.version
        })
        .collect();
    earlier.sort_by(|x, y| y.1.version.cmp(&x.1.version));
    earlier.truncate(from_last);
    let published: Vec<String> = repo.deltas().into_iter().map(|(n, _)| n).collect();
    let mut keys = None;
    for (name, old) in earlier {
        let wanted = DeltaMeta {
            product: meta.product.clone(),
            board: meta.board.clone(),
            version: meta.version.clone(),
            channel: meta.channel.clone(),
            from: old.version.clone(),
            from_root_hash: String::new(),
        };
        if covered.contains(&old.version) || published.contains(&wanted.target_name()) {
            continue;
        }
        let Some(stored) = repo.stored_target(&name) else {
            continue;
        };
        eprintln!(
            "making the delta from {} (the full bundle the repository keeps) ...",
            old.version
        );
        let work = tempfile::tempdir()?;
        let base = match extract_bundle(&stored, &root, work.path()) {
            Ok(m) => m,
            Err(e) => {
                eprintln!(
                    "warning: no delta from {}: its bundle does not read back under this \
                     build's root key ({e:#}); devices running it fetch the full bundle",
                    old.version
                );
                continue;
            }
        };
        let keys = match &keys {
            Some(k) => k,
            None => {
                let rep = aperture_image::progress::Reporter::new(None)?;
                keys.insert(aperture_image::keys::for_build(
                    &a.keys, false, a.release, false, &rep,
                )?)
            }
        };
        let out = work.path().join("delta.bundle");
        make_delta_bundle_from(&a.image, &base, work.path(), Some(&out), keys)?;
        let m = bundle_manifest(&out, &root)?;
        publish(repo, &out, delta_meta(&m)?)?;
    }
    Ok(())
}

fn halt(a: &ReleaseHaltArgs, halted: bool, now: jiff::Timestamp) -> Result<()> {
    let version: semver::Version = a
        .version
        .parse()
        .with_context(|| format!("--version {}", a.version))?;
    let mut repo = Repo::open_to_change(&a.repo)?;
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
        match (&t.release, &t.delta) {
            (Some(m), _) => println!(
                "{:<10} {:<12} {:<18} {:>12} {:<8} {}",
                m.channel,
                m.version.to_string(),
                m.board,
                t.length,
                if m.halted { "HALTED" } else { "live" },
                m.waves
            ),
            // A delta follows its release's state; it serves devices that run its base.
            (None, Some(d)) => println!(
                "{:<10} {:<12} {:<18} {:>12} {:<8} from {} (root {})",
                d.channel,
                d.version.to_string(),
                d.board,
                t.length,
                "delta",
                d.from,
                d.from_root_hash.get(..12).unwrap_or(&d.from_root_hash)
            ),
            (None, None) => println!(
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
