//! The update loop on the appliance (`aperture-agent update-loop`, run by
//! `aperture-update-loop.service`) and one check by hand (`aperture-agent check-update`):
//! [`aperture_client`]'s loop with the image's settings, its trusted TUF root and fleet CA,
//! the running image's facts, and the updater library as the installer.

use anyhow::Context;

use aperture_appliance::{BuildFacts, Files};
use aperture_client::{Running, StateDir, UpdateLoop, UpdaterInstaller};
use aperture_release::Settings;
use aperture_updater::source::FetchOptions;
use aperture_updater::{Paths, Updater};

/// The image's update settings, or `None` when it has none (the loop is off).
pub fn settings(files: &Files) -> anyhow::Result<Option<Settings>> {
    let path = files.update_settings();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Settings::parse(&text)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The loop for the appliance laid out as `files`.
pub fn make(files: &Files, settings: Settings) -> anyhow::Result<UpdateLoop<UpdaterInstaller>> {
    let facts = BuildFacts::load(&files.build_facts())?;
    let running = Running {
        product: facts.product.clone(),
        board: facts.board.to_string(),
        version: facts.version.parse().with_context(|| {
            format!(
                "the image's version `{}` ({}) is not semantic versioning",
                facts.version,
                files.build_facts().display()
            )
        })?,
        // What picks delta bundles; an unreadable command line only costs full bundles.
        root_hash: aperture_updater::facts::booted_root_hash(&files.cmdline()).unwrap_or_else(
            |e| {
                tracing::warn!("{e}; delta bundles are not used");
                None
            },
        ),
    };
    let mut fetch = FetchOptions::new(files.ca_bundle());
    let ca = files.update_ca();
    if ca.exists() {
        fetch.extra_ca = Some(ca.clone());
    }
    if settings.insecure_http {
        tracing::warn!(
            "the update repository {} is plain http:// (insecure_http): anyone on the network \
             can withhold or replay updates; the signatures still protect what is installed",
            settings.repository
        );
    }
    let installer = UpdaterInstaller {
        updater: Updater::on_device(Paths::from_files(files))?,
        ca: fetch.extra_ca.clone(),
        insecure_http: settings.insecure_http,
    };
    UpdateLoop::new(
        settings,
        running,
        files.update_root(),
        StateDir(files.agent_state()),
        fetch,
        installer,
    )
    .map_err(anyhow::Error::msg)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `aperture-agent update-loop`: poll for ever.
pub fn run_loop(files: &Files) -> anyhow::Result<()> {
    let Some(settings) = settings(files)? else {
        println!(
            "no update settings in this image ({}); the update loop is off",
            files.update_settings().display()
        );
        return Ok(());
    };
    // Enrollment is aperture-enroll.service's (first boot); the reports start once the
    // identity exists (`Reports` loads it when the first report is due).
    let mut l = make(files, settings)?;
    let mut reports = crate::fleet::Reports::new(
        StateDir(files.agent_state()),
        crate::fleet::key_store(files)?,
    );
    l.run(
        &now,
        &mut |secs| std::thread::sleep(std::time::Duration::from_secs(secs)),
        &mut |last, t| {
            reports.send(
                || match crate::status::update_status(files) {
                    Ok(st) => {
                        let mut report = crate::fleet::build_report(
                            &st,
                            Some(last),
                            crate::fleet::runtime_alive(&mut crate::health::Systemctl),
                        );
                        report.runtime = Some(crate::runtime::summary(files));
                        Some(report)
                    }
                    Err(e) => {
                        tracing::warn!("fleet report: reading the updater's status: {e}");
                        None
                    }
                },
                t,
            )
        },
    )
}

/// `aperture-agent check-update`: one check now (installing what it finds), no reboot unless
/// `reboot`. Prints the loop's status as one line or JSON.
pub fn check_once(files: &Files, json: bool, reboot: bool) -> anyhow::Result<()> {
    let settings = settings(files)?.with_context(|| {
        format!(
            "no update settings in this image ({}): build it with an [update] section in its \
             recipe",
            files.update_settings().display()
        )
    })?;
    let mut l = make(files, settings)?;
    let t = now();
    l.check(t);
    let st = l.status().clone();
    if json {
        println!("{}", serde_json::to_string(&st)?);
    } else {
        println!("{}", st.message);
    }
    if reboot {
        l.reboot_if_due(t);
    }
    match st.result {
        Some(aperture_client::Outcome::UpToDate)
        | Some(aperture_client::Outcome::Installed)
        | Some(aperture_client::Outcome::Waiting) => Ok(()),
        _ => anyhow::bail!("{}", st.message),
    }
}
