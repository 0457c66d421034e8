//! What the repository tests share: fixed times, release metadata, fake bundles, and loading
//! a served repository through tough's client as a device would.

// Each test file uses some of these helpers, not all.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use aperture_release::{ReleaseMeta, Waves};

/// A fixed time, `secs` after 2027-01-15.
pub fn t(secs: i64) -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

/// Release metadata of version `version` on `channel`.
pub fn meta(version: &str, channel: &str) -> ReleaseMeta {
    ReleaseMeta {
        product: "aperture-edge".into(),
        board: "qemu-x86_64".into(),
        version: version.parse().unwrap(),
        security_version: 1,
        channel: channel.into(),
        published_at: 0,
        waves: "1%@0h,100%@1d".parse::<Waves>().unwrap(),
        halted: false,
        gate: Default::default(),
    }
}

/// A fake bundle file holding `bytes`.
pub fn bundle(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Load `served` (a repository folder) through tough as a device would, trusting `root1`,
/// at the real time or ignoring expiry.
pub fn load(served: &Path, root1: &[u8], enforce: bool) -> Result<tough::Repository, String> {
    let url = |sub: &str| url::Url::from_directory_path(served.join(sub)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut loader = tough::RepositoryLoader::new(&root1, url("metadata"), url("targets"));
    if !enforce {
        loader = loader.expiration_enforcement(tough::ExpirationEnforcement::Unsafe);
    }
    rt.block_on(loader.load()).map_err(|e| format!("{e}"))
}

/// A target's bytes, read through the client (length and hashes checked).
pub fn read_target(repo: &tough::Repository, name: &str) -> Result<Vec<u8>, String> {
    use tough::IntoVec;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let name = tough::TargetName::new(name).unwrap();
    rt.block_on(async {
        let stream = repo
            .read_target(&name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no such target")?;
        stream.into_vec().await.map_err(|e| e.to_string())
    })
}
