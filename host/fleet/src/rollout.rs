//! Rollouts' pure rules, kept apart from the database so each is tested in memory: what a
//! device's report says about a release ([`classify`]), when a failure policy halts a rollout
//! ([`verdict`]), the checks of a request to start one ([`check_start`]), and its progress over
//! time from its devices' outcome rows ([`series`]).
//!
//! The database applies them in the report's own transaction (`db::outcomes`); the signed
//! record the devices obey is built from the database's row (`db::rollouts`) and signed by
//! [`crate::signer`].

use aperture_release::rollout::MAX_DEVICES;
use aperture_release::{ReleaseMeta, Waves};

use crate::api::{
    check_name, DeviceSelector, FailurePolicy, FieldError, Outcome, Report, SeriesPoint,
    StartRollout, MAX_LINE, RESULT_COMMITTED, RESULT_FAILED, RESULT_ROLLED_BACK,
};

/// The form a version is stored and compared in: semver's own printing when it parses (so
/// `1.1.0` and `1.1.0+0` stay apart, as the repository keeps them), else the text as it is.
pub fn version_key(version: &str) -> String {
    semver::Version::parse(version.trim()).map_or_else(|_| version.to_string(), |v| v.to_string())
}

/// What `report` says about the release `version` (in [`version_key`] form), with the journal
/// line or health detail to keep: `None` when it says nothing about it (it neither runs it nor
/// last tried it). The rules are [`Outcome`]'s.
pub fn classify(report: &Report, version: &str) -> Option<(Outcome, String)> {
    let update = report
        .last_update
        .as_ref()
        .filter(|u| u.version.as_deref().map(version_key).as_deref() == Some(version));
    let runs = version_key(&report.version) == version;
    let health = report.health.as_ref().filter(|_| runs);
    let journal = update.map(|u| u.journal.clone()).unwrap_or_default();
    if let Some(u) = update {
        if u.result == RESULT_FAILED {
            return Some((Outcome::FailedInstall, journal));
        }
        if u.result == RESULT_ROLLED_BACK {
            return Some((Outcome::FailedHealth, journal));
        }
    }
    if let Some(h) = health {
        if !h.passed {
            return Some((Outcome::FailedHealth, h.detail.clone()));
        }
        return Some((Outcome::Installed, journal));
    }
    if runs && update.is_some_and(|u| u.result == RESULT_COMMITTED) {
        return Some((Outcome::Installed, journal));
    }
    (runs || update.is_some()).then_some((Outcome::Started, journal))
}

/// Why `policy` halts a rollout in which `tried` devices tried and `failed` of them failed, or
/// `None` while it may go on.
pub fn verdict(policy: &FailurePolicy, tried: u64, failed: u64) -> Option<String> {
    if let Some(max) = policy.max_failures {
        if failed > max {
            return Some(format!(
                "{failed} devices failed, more than the {max} the policy allows"
            ));
        }
    }
    if let Some(pct) = policy.max_failure_percent {
        // failed / tried > pct / 100, in integers.
        if tried >= policy.min_tried.max(1) && failed * 100 > u64::from(pct) * tried {
            return Some(format!(
                "{failed} of {tried} devices that tried failed ({:.1} %), more than the {pct} % \
                 the policy allows",
                failed as f64 * 100.0 / tried as f64
            ));
        }
    }
    None
}

/// A start request, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRollout {
    /// The release's channel.
    pub channel: String,
    /// The release's version.
    pub version: semver::Version,
    /// Which devices, as asked.
    pub selection: DeviceSelector,
    /// Its waves.
    pub waves: Waves,
    /// When it halts itself.
    pub policy: FailurePolicy,
}

fn field(field: &str, why: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        why: why.into(),
    }
}

/// Check a failure policy: at least one limit, a percentage within 0..=100, `min_tried` 1 on.
pub fn check_policy(policy: &FailurePolicy) -> Result<(), FieldError> {
    if policy.max_failures.is_none() && policy.max_failure_percent.is_none() {
        return Err(field(
            "policy",
            "give max_failures, max_failure_percent or both: a rollout that cannot halt itself \
             is refused",
        ));
    }
    if policy.max_failure_percent.is_some_and(|p| p > 100) {
        return Err(field("policy.max_failure_percent", "0 to 100"));
    }
    if policy.min_tried == 0 {
        return Err(field("policy.min_tried", "at least 1"));
    }
    Ok(())
}

/// Check a request to start a rollout; the error names the field.
pub fn check_start(req: &StartRollout) -> Result<NewRollout, FieldError> {
    if !ReleaseMeta::valid_channel(&req.channel) {
        return Err(field(
            "channel",
            "use lower-case letters, digits, `-` and `_` (at most 64), as releases do",
        ));
    }
    let version = semver::Version::parse(req.version.trim())
        .map_err(|e| field("version", format!("not a semantic version: {e}")))?;
    match &req.devices {
        DeviceSelector::All => {}
        DeviceSelector::Tag(t) => check_name("devices.tag", t)?,
        DeviceSelector::List(ids) => {
            if ids.is_empty() {
                return Err(field("devices.list", "name at least one device"));
            }
            if ids.len() > MAX_DEVICES {
                return Err(field(
                    "devices.list",
                    format!("at most {MAX_DEVICES} devices"),
                ));
            }
            for (i, id) in ids.iter().enumerate() {
                check_name(&format!("devices.list[{i}]"), id)?;
            }
        }
    }
    let waves: Waves = req
        .waves
        .parse()
        .map_err(|e: aperture_release::WavesError| field("waves", e.to_string()))?;
    check_policy(&req.policy)?;
    Ok(NewRollout {
        channel: req.channel.clone(),
        version,
        selection: req.devices.clone(),
        waves,
        policy: req.policy,
    })
}

/// Check the reason given with a state change.
pub fn check_reason(reason: Option<&str>) -> Result<(), FieldError> {
    match reason {
        Some(r) if r.len() > MAX_LINE || r.chars().any(char::is_control) => Err(field(
            "reason",
            format!("at most {MAX_LINE} bytes, no control characters"),
        )),
        _ => Ok(()),
    }
}

/// A rollout's counts over time from its devices' rows `(first_at, at, outcome)`: one point at
/// each distinct time a row began or changed, oldest first, with the counts as they stood then
/// ([`SeriesPoint`] says how a row that keeps only two times is counted).
pub fn series(rows: &[(i64, i64, Outcome)]) -> Vec<SeriesPoint> {
    let mut times: Vec<i64> = rows
        .iter()
        .flat_map(|&(first, at, _)| [first, at])
        .collect();
    times.sort_unstable();
    times.dedup();
    times
        .into_iter()
        .map(|t| {
            let tried = rows.iter().filter(|r| r.0 <= t).count() as u64;
            let reached = |o: &dyn Fn(Outcome) -> bool| {
                rows.iter().filter(|r| r.1 <= t && o(r.2)).count() as u64
            };
            let installed = reached(&|o| o == Outcome::Installed);
            let failed = reached(&Outcome::is_failure);
            SeriesPoint {
                at: t,
                tried,
                installed,
                failed,
                failure_percent: if tried == 0 {
                    0.0
                } else {
                    failed as f64 * 100.0 / tried as f64
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{HealthResult, UpdateResult};

    fn report(runs: &str, update: Option<(&str, &str)>, health: Option<bool>) -> Report {
        Report {
            version: runs.into(),
            slot: "a".into(),
            slots: vec![],
            floor: 1,
            last_update: update.map(|(result, v)| UpdateResult {
                result: result.into(),
                version: Some(v.into()),
                journal: format!("{result} {v}"),
            }),
            health: health.map(|passed| HealthResult {
                passed,
                detail: if passed { "" } else { "runtime down" }.into(),
            }),
            runtime_alive: true,
            runtime: None,
        }
    }

    #[test]
    fn reports_are_classified_by_what_they_say_about_the_version() {
        let v = "1.1.0";
        let c = |r: Report| classify(&r, v).map(|(o, _)| o);
        // Nothing about 1.1.0.
        assert_eq!(c(report("1.0.0", None, Some(true))), None);
        assert_eq!(c(report("1.0.0", Some(("failed", "1.2.0")), None)), None);
        // Installed into the other slot, not rebooted yet; then on trial with no verdict.
        assert_eq!(
            c(report("1.0.0", Some(("installed", v)), None)),
            Some(Outcome::Started)
        );
        assert_eq!(c(report(v, None, None)), Some(Outcome::Started));
        // Healthy, or committed.
        assert_eq!(c(report(v, None, Some(true))), Some(Outcome::Installed));
        assert_eq!(
            c(report(v, Some(("committed", v)), None)),
            Some(Outcome::Installed)
        );
        // The install failed: it still runs the old version, whose health is not V's.
        assert_eq!(
            c(report("1.0.0", Some(("failed", v)), Some(true))),
            Some(Outcome::FailedInstall)
        );
        // V ran and failed: on V with a failed gate, or rolled back to the old slot.
        assert_eq!(c(report(v, None, Some(false))), Some(Outcome::FailedHealth));
        assert_eq!(
            c(report("1.0.0", Some(("rolled-back", v)), Some(true))),
            Some(Outcome::FailedHealth)
        );
        // The old version's failed gate is not V's.
        assert_eq!(c(report("1.0.0", None, Some(false))), None);
        // The detail kept is the failing check's.
        assert_eq!(
            classify(&report(v, None, Some(false)), v).unwrap().1,
            "runtime down"
        );
    }

    #[test]
    fn a_count_limit_halts_above_it() {
        let p = FailurePolicy {
            max_failures: Some(2),
            max_failure_percent: None,
            min_tried: 1,
        };
        assert_eq!(verdict(&p, 100, 2), None);
        assert!(verdict(&p, 100, 3).unwrap().contains("3 devices failed"));
        let zero = FailurePolicy {
            max_failures: Some(0),
            ..p
        };
        assert!(verdict(&zero, 1, 1).is_some());
    }

    #[test]
    fn a_percentage_halts_only_from_min_tried_on() {
        let p = FailurePolicy {
            max_failures: None,
            max_failure_percent: Some(25),
            min_tried: 4,
        };
        // 2 of 3 is 66 % but only 3 tried.
        assert_eq!(verdict(&p, 3, 2), None);
        // 1 of 4 is 25 %: not above.
        assert_eq!(verdict(&p, 4, 1), None);
        assert!(verdict(&p, 4, 2).unwrap().contains("50.0 %"));
    }

    #[test]
    fn start_requests_are_checked_field_by_field() {
        let good = StartRollout {
            channel: "stable".into(),
            version: "1.1.0".into(),
            devices: DeviceSelector::All,
            waves: "10%@0h,100%@4h".into(),
            policy: FailurePolicy {
                max_failures: Some(1),
                max_failure_percent: None,
                min_tried: 1,
            },
        };
        assert_eq!(check_start(&good).unwrap().version.to_string(), "1.1.0");
        let bad = |f: &dyn Fn(&mut StartRollout)| {
            let mut r = good.clone();
            f(&mut r);
            check_start(&r).unwrap_err().field
        };
        assert_eq!(bad(&|r| r.channel = "Stable/x".into()), "channel");
        assert_eq!(bad(&|r| r.version = "one".into()), "version");
        assert_eq!(bad(&|r| r.waves = "10%".into()), "waves");
        assert_eq!(
            bad(&|r| r.devices = DeviceSelector::Tag("a b".into())),
            "devices.tag"
        );
        assert_eq!(
            bad(&|r| r.devices = DeviceSelector::List(vec!["ok".into(), "".into()])),
            "devices.list[1]"
        );
        assert_eq!(bad(&|r| r.policy.max_failures = None), "policy");
        assert_eq!(
            bad(&|r| r.policy.max_failure_percent = Some(101)),
            "policy.max_failure_percent"
        );
        assert_eq!(bad(&|r| r.policy.min_tried = 0), "policy.min_tried");
    }

    #[test]
    fn series_counts_each_row_from_its_times() {
        assert!(series(&[]).is_empty());
        let rows = [
            (100, 100, Outcome::Installed),
            (100, 160, Outcome::FailedHealth),
            (130, 130, Outcome::Started),
            (130, 190, Outcome::FailedInstall),
        ];
        let got: Vec<(i64, u64, u64, u64)> = series(&rows)
            .iter()
            .map(|p| (p.at, p.tried, p.installed, p.failed))
            .collect();
        assert_eq!(
            got,
            [
                (100, 2, 1, 0),
                (130, 4, 1, 0),
                (160, 4, 1, 1),
                (190, 4, 1, 2)
            ]
        );
        let last = series(&rows).pop().unwrap();
        assert!((last.failure_percent - 50.0).abs() < 1e-9);
    }
}
