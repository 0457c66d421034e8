//! The repository's signing keys: Ed25519, PKCS#8 DER files that tough reads
//! ([`tough::key_source::LocalKeySource`]). A key that is missing when a repository is made
//! is generated as a development key, loudly, with a marker file beside it
//! (`KEY.DEVELOPMENT-KEY-DO-NOT-SHIP`); every command run with `--release` refuses a
//! repository that uses one, as a release build refuses development image keys.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tough::key_source::{KeySource, LocalKeySource};

use crate::config::{RepoConfig, Role, ROLES};

/// The suffix of the marker file beside a development key.
pub const DEVELOPMENT_SUFFIX: &str = "DEVELOPMENT-KEY-DO-NOT-SHIP";

/// The marker beside the key at `key`.
pub fn marker(key: &Path) -> PathBuf {
    let mut name = key.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(DEVELOPMENT_SUFFIX);
    key.with_file_name(name)
}

/// Write a new Ed25519 key (PKCS#8 v2 DER, mode 0600) at `path`; never over an existing file.
pub fn generate(path: &Path, development: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let doc = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| anyhow::anyhow!("generating an Ed25519 key"))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "creating the key {} (keys are never overwritten)",
                path.display()
            )
        })?;
    f.write_all(doc.as_ref())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    if development {
        std::fs::write(
            marker(path),
            "This key was generated automatically for a development repository.\n\
             Never sign a release with it: `--release` refuses it.\n",
        )
        .with_context(|| format!("writing {}", marker(path).display()))?;
    }
    Ok(())
}

/// Make every key the configuration names that does not exist yet, as development keys, with
/// one loud warning naming them. Refused with `release`.
pub fn ensure(repo: &Path, config: &RepoConfig, release: bool) -> Result<Vec<PathBuf>> {
    let mut made = Vec::new();
    for role in ROLES {
        for path in config.key_paths(repo, role) {
            if path.exists() {
                continue;
            }
            if release {
                bail!(
                    "the {} key {} does not exist, and --release never makes development keys: \
                     make one (`aperture repo keygen {}`) and keep it offline",
                    role.name(),
                    path.display(),
                    path.display()
                );
            }
            generate(&path, true)?;
            made.push(path);
        }
    }
    warn_development(&made);
    Ok(made)
}

/// The loud warning, on stderr, that development keys were just made (nothing if none).
pub fn warn_development(made: &[PathBuf]) {
    if made.is_empty() {
        return;
    }
    eprintln!("WARNING: generated DEVELOPMENT signing keys for this TUF repository:");
    for p in made {
        eprintln!("WARNING:   {}", p.display());
    }
    eprintln!(
        "WARNING: metadata signed with them is for development only; every repository command \
         run with --release refuses them."
    );
}

/// The key sources of `roles` (tough picks, for each role it signs, the keys the root lists
/// for it). With `release`, a development key is refused.
pub fn sources(
    repo: &Path,
    config: &RepoConfig,
    roles: &[Role],
    release: bool,
) -> Result<Vec<Box<dyn KeySource>>> {
    let mut out: Vec<Box<dyn KeySource>> = Vec::new();
    for role in roles {
        out.extend(sources_for(
            repo,
            role.name(),
            &config.key_paths(repo, *role),
            release,
        )?);
    }
    Ok(out)
}

/// The key sources at `paths`, for the role named `role` (in errors). With `release`, a
/// development key is refused.
pub fn sources_for(
    repo: &Path,
    role: &str,
    paths: &[PathBuf],
    release: bool,
) -> Result<Vec<Box<dyn KeySource>>> {
    let mut out: Vec<Box<dyn KeySource>> = Vec::new();
    for path in paths {
        if !path.exists() {
            bail!(
                "the {role} key {} is missing: signing {role} metadata needs it (connect the offline \
                 media it is kept on, or fix the path in {})",
                path.display(),
                repo.join(crate::config::CONFIG_FILE).display()
            );
        }
        if release && marker(path).exists() {
            bail!(
                "refusing to sign a release with the development {role} key {}: use a release key \
                 (`aperture repo keygen`, kept offline), or leave out --release for a \
                 repository that will never serve a real fleet",
                path.display()
            );
        }
        out.push(Box::new(LocalKeySource { path: path.clone() }));
    }
    Ok(out)
}

/// Whether any key of the repository is a development key.
pub fn any_development(repo: &Path, config: &RepoConfig) -> bool {
    ROLES
        .iter()
        .flat_map(|r| config.key_paths(repo, *r))
        .chain(config.rollouts_key_paths(repo))
        .any(|p| marker(&p).exists())
}
