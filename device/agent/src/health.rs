//! `aperture-agent health`: the health gate that decides whether a freshly installed slot is
//! kept.
//!
//! It waits until every unit in build.json's `required_services` is `active`, then commits the
//! running slot through the updater library ([`aperture_updater::Updater::commit`]: mark good,
//! raise the anti-rollback floor). A `Type=notify` service such as the reference runtime is
//! `active` only once it sent `READY=1` (sd_notify(3)), so "active" is also the runtime's
//! readiness report.
//!
//! It runs as `aperture-health.service`, ordered before `boot-complete.target` (systemd's
//! Automatic Boot Assessment: `systemd-bless-boot` marks the boot entry good once that target
//! is reached, so a failed gate also keeps the entry counting). On failure:
//! * the running slot is on trial: exit non-zero; the unit's `FailureAction=reboot` reboots,
//!   the loader counts the try, and when the tries are used up it boots the previous slot,
//!   where [`crate::status`] reports the rollback;
//! * the running slot is already committed (good): report and exit 0. Rebooting would boot the
//!   same slot again, so it could only loop.
//!
//! The commit runs on every boot whose gate passes, also of a slot committed long ago: on
//! Jetson it resets the firmware's boot retry count, which counts every boot, committed or
//! not (`aperture_slots::tegra::retry`); without it the firmware would give up on the running
//! slot after `RootfsRetryCountMax` warm reboots.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use aperture_appliance::{BuildFacts, Files};
use aperture_slots::SlotStatus;
use aperture_sys::{Cmd, CmdError};
use aperture_updater::lifecycle::Commit;
use aperture_updater::{UpdateError, Updater};

use crate::status::StatusError;

/// Asks the service manager about units (a trait so tests fake it).
pub trait UnitProbe {
    /// The unit's active state (`active`, `activating`, `failed`, `inactive`, ...).
    fn active_state(&mut self, unit: &str) -> Result<String, HealthError>;

    /// The unit's own start timeout (`TimeoutStartSec=`) while it is in its start phase (a
    /// `Type=notify` service before `READY=1`, such as the runtime building a TensorRT engine
    /// on first start); `None` when it is not starting, is waiting to be restarted, or has no
    /// finite limit.
    fn start_timeout(&mut self, _unit: &str) -> Result<Option<Duration>, HealthError> {
        Ok(None)
    }
}

/// `systemctl is-active UNIT`: prints the state, exits non-zero unless it is active (the exit
/// code is an answer, not a failure).
#[derive(Debug, Default, Clone, Copy)]
pub struct Systemctl;

impl UnitProbe for Systemctl {
    fn active_state(&mut self, unit: &str) -> Result<String, HealthError> {
        let out = Cmd::new("systemctl").args(["is-active", unit]).output()?;
        let state = out.stdout_text().trim().to_string();
        Ok(if state.is_empty() {
            "unknown".into()
        } else {
            state
        })
    }

    fn start_timeout(&mut self, unit: &str) -> Result<Option<Duration>, HealthError> {
        let out = Cmd::new("systemctl")
            .args(["show", "--property=SubState,TimeoutStartUSec", unit])
            .output()?;
        Ok(start_timeout_of(&out.stdout_text()))
    }
}

/// The start timeout in `systemctl show --property=SubState,TimeoutStartUSec` output, when the
/// unit is in its start phase (`SubState=start`) and the timeout is finite.
pub fn start_timeout_of(show: &str) -> Option<Duration> {
    let mut starting = false;
    let mut timeout = None;
    for line in show.lines() {
        match line.split_once('=') {
            Some(("SubState", v)) => starting = v.trim() == "start",
            Some(("TimeoutStartUSec", v)) => timeout = timespan(v.trim()),
            _ => {}
        }
    }
    timeout.filter(|_| starting)
}

/// A time span as systemd prints one (`20min`, `1min 30s`, `1.500000s`, `250ms`); `None` for
/// `infinity` or anything else it cannot read.
pub fn timespan(text: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut any = false;
    for word in text.split_whitespace() {
        let split = word
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(word.len());
        let (number, unit) = word.split_at(split);
        let n: f64 = number.parse().ok()?;
        let seconds = match unit {
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e-6,
            "ms" => 1e-3,
            "s" | "" => 1.0,
            "min" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "w" => 7.0 * 86400.0,
            _ => return None,
        };
        total += n * seconds;
        any = true;
    }
    any.then(|| Duration::from_secs_f64(total))
}

/// How long to wait.
#[derive(Debug, Clone, Copy)]
pub struct GateOptions {
    /// Give up after this long.
    pub timeout: Duration,
    /// Ask again after this long.
    pub interval: Duration,
    /// A required unit still in its start phase is waited for as long as its own start
    /// timeout allows ([`UnitProbe::start_timeout`]), up to this long.
    pub start_limit: Duration,
}

/// [`GateOptions::start_limit`] by default; `aperture-health.service`'s `TimeoutStartSec`
/// leaves room for it.
pub const START_LIMIT: Duration = Duration::from_secs(3600);

impl Default for GateOptions {
    fn default() -> Self {
        GateOptions {
            timeout: Duration::from_secs(120),
            interval: Duration::from_secs(1),
            start_limit: START_LIMIT,
        }
    }
}

/// The gate's result when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum GateReport {
    /// Every required unit is active; the running slot is committed.
    Passed {
        /// The required units.
        units: Vec<String>,
        /// What the commit did.
        commit: Commit,
    },
    /// Required units are not active, but the running slot is already committed, so there
    /// is nothing to roll back to by rebooting.
    UnhealthyCommitted {
        /// Units not active and their states.
        not_active: Vec<(String, String)>,
    },
}

impl fmt::Display for GateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GateReport::Passed { units, commit } => write!(
                f,
                "health gate passed ({} required units active): {commit}",
                units.len()
            ),
            GateReport::UnhealthyCommitted { not_active } => write!(
                f,
                "health gate: {} are not active, but this slot is already committed; not \
                 rebooting (it would boot the same slot)",
                list(not_active)
            ),
        }
    }
}

/// Why the gate failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HealthError {
    /// Required units did not become active in time on a slot that is on trial.
    #[error("health check failed: {} (the gate waits up to {timeout:?} and stops at a failed unit); this slot stays on trial (the loader falls back to the previous slot when its tries run out)", list(.not_active))]
    Unhealthy {
        /// Units not active and their last states.
        not_active: Vec<(String, String)>,
        /// How long the gate waited.
        timeout: Duration,
    },
    /// The image's facts could not be read.
    #[error(transparent)]
    Facts(#[from] StatusError),
    /// The updater failed to read the slot state or to commit.
    #[error("committing the running slot")]
    Update(#[from] UpdateError),
    /// The service manager could not be asked.
    #[error(transparent)]
    Command(#[from] CmdError),
}

fn list(units: &[(String, String)]) -> String {
    units
        .iter()
        .map(|(u, s)| format!("{u} ({s})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Ask about every unit until all are active or the wait is over; the units not active at the
/// last poll (empty when healthy) and how long the gate was willing to wait.
///
/// The wait is `opts.timeout`, longer for a unit that is still in its start phase: systemd
/// allows it its `TimeoutStartSec=` (up to `opts.start_limit`) and fails it after that, which
/// ends the wait at once.
pub fn wait_active(
    probe: &mut dyn UnitProbe,
    units: &[String],
    opts: &GateOptions,
    sleep: &mut dyn FnMut(Duration),
) -> Result<(Vec<(String, String)>, Duration), HealthError> {
    let interval = opts.interval.max(Duration::from_millis(1));
    let mut limit = opts.timeout.max(interval);
    let mut waited = Duration::ZERO;
    loop {
        let mut not_active = Vec::new();
        for unit in units {
            let state = probe.active_state(unit)?;
            if state != "active" {
                not_active.push((unit.clone(), state));
            }
        }
        if not_active.is_empty() {
            return Ok((not_active, limit));
        }
        // `failed` is final: while systemd still retries a unit (Restart=) it reports
        // `activating`. Waiting out the timeout would only delay the reboot that moves the
        // loader on to the next try.
        if not_active.iter().any(|(_, state)| state == "failed") {
            return Ok((not_active, limit));
        }
        for (unit, state) in &not_active {
            if state != "activating" {
                continue;
            }
            if let Some(own) = probe.start_timeout(unit)? {
                let own = own.min(opts.start_limit);
                if own > limit {
                    tracing::info!(
                        "health gate: {unit} is still starting; waiting up to {own:?}, its own \
                         start timeout (TimeoutStartSec)"
                    );
                    limit = own;
                }
            }
        }
        if waited + interval >= limit {
            return Ok((not_active, limit));
        }
        tracing::debug!("waiting for {}", list(&not_active));
        sleep(interval);
        waited += interval;
    }
}

/// Run the gate on the appliance laid out as `files` with `updater` for it.
pub fn run_gate(
    files: &Files,
    updater: &mut Updater,
    probe: &mut dyn UnitProbe,
    opts: &GateOptions,
    sleep: &mut dyn FnMut(Duration),
) -> Result<GateReport, HealthError> {
    let facts = BuildFacts::load(&files.build_facts()).map_err(StatusError::from)?;
    let units = facts.required_services;
    tracing::info!(
        "health gate: waiting up to {:?} for {} required units",
        opts.timeout,
        units.len()
    );
    let (not_active, waited) = wait_active(probe, &units, opts, sleep)?;
    if not_active.is_empty() {
        let commit = updater.commit()?;
        return Ok(GateReport::Passed { units, commit });
    }
    let status = updater.boot_state()?.status(updater.booted());
    if status == SlotStatus::Good {
        return Ok(GateReport::UnhealthyCommitted { not_active });
    }
    Err(HealthError::Unhealthy {
        not_active,
        timeout: waited,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failed_commit_prints_each_cause_once() {
        let e = HealthError::Update(aperture_updater::UpdateError::File {
            op: "reading",
            path: "/efi/aperture/state".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        });
        assert_eq!(
            format!("{:#}", anyhow::Error::from(e)),
            "committing the running slot: reading /efi/aperture/state: gone"
        );
    }

    use super::*;

    struct Counting {
        state: &'static str,
        asked: u32,
    }

    impl UnitProbe for Counting {
        fn active_state(&mut self, _unit: &str) -> Result<String, HealthError> {
            self.asked += 1;
            Ok(self.state.to_string())
        }
    }

    fn opts() -> GateOptions {
        GateOptions {
            timeout: Duration::from_secs(120),
            interval: Duration::from_secs(1),
            start_limit: Duration::from_secs(3600),
        }
    }

    /// Every unit reports `state`; a unit in its start phase with `own` as its start timeout.
    struct Starting {
        state: &'static str,
        own: Option<Duration>,
        asked: u32,
    }

    impl UnitProbe for Starting {
        fn active_state(&mut self, _unit: &str) -> Result<String, HealthError> {
            self.asked += 1;
            Ok(self.state.to_string())
        }
        fn start_timeout(&mut self, _unit: &str) -> Result<Option<Duration>, HealthError> {
            Ok(self.own)
        }
    }

    #[test]
    fn a_unit_still_starting_is_given_its_own_start_timeout_up_to_the_limit() {
        let units = vec!["aperture-runtime.service".to_string()];
        let wait = |own: Option<Duration>, limit: u64| {
            let mut p = Starting {
                state: "activating",
                own,
                asked: 0,
            };
            let o = GateOptions {
                start_limit: Duration::from_secs(limit),
                ..opts()
            };
            let (left, waited) = wait_active(&mut p, &units, &o, &mut |_| {}).unwrap();
            assert_eq!(left.len(), 1);
            (p.asked, waited.as_secs())
        };
        // JetPack's drop-in: TimeoutStartSec=20min for a first TensorRT engine build.
        assert_eq!(wait(Some(Duration::from_secs(1200)), 3600), (1200, 1200));
        assert_eq!(wait(Some(Duration::from_secs(7200)), 3600), (3600, 3600));
        // A shorter own timeout (systemd's default 90 s) does not shorten the gate's wait.
        assert_eq!(wait(Some(Duration::from_secs(90)), 3600), (120, 120));
        // Waiting to be restarted, or no finite limit: the gate's own wait.
        assert_eq!(wait(None, 3600), (120, 120));
    }

    #[test]
    fn a_unit_that_fails_after_a_long_start_ends_the_wait() {
        struct FailsLater(u32);
        impl UnitProbe for FailsLater {
            fn active_state(&mut self, _unit: &str) -> Result<String, HealthError> {
                self.0 += 1;
                Ok(if self.0 < 300 { "activating" } else { "failed" }.into())
            }
            fn start_timeout(&mut self, _unit: &str) -> Result<Option<Duration>, HealthError> {
                Ok(Some(Duration::from_secs(1200)))
            }
        }
        let mut p = FailsLater(0);
        let units = vec!["aperture-runtime.service".to_string()];
        let (left, _) = wait_active(&mut p, &units, &opts(), &mut |_| {}).unwrap();
        assert_eq!(left[0].1, "failed");
        assert_eq!(p.0, 300);
    }

    #[test]
    fn systemctl_show_output_is_read_for_a_starting_unit_only() {
        let show = |sub: &str, t: &str| {
            start_timeout_of(&format!("SubState={sub}\nTimeoutStartUSec={t}\n"))
        };
        assert_eq!(show("start", "20min"), Some(Duration::from_secs(1200)));
        assert_eq!(show("start", "1min 30s"), Some(Duration::from_secs(90)));
        assert_eq!(
            show("start", "1h 2min 3.500000s"),
            Some(Duration::from_secs_f64(3723.5))
        );
        assert_eq!(show("start", "infinity"), None);
        assert_eq!(show("auto-restart", "20min"), None);
        assert_eq!(show("running", "20min"), None);
        assert_eq!(timespan("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(timespan("5\u{b5}s"), Some(Duration::from_micros(5)));
        assert_eq!(timespan(""), None);
        assert_eq!(timespan("3 fortnights"), None);
    }

    #[test]
    fn a_failed_unit_ends_the_wait_at_once() {
        let mut p = Counting {
            state: "failed",
            asked: 0,
        };
        let units = vec!["aperture-runtime.service".to_string()];
        let mut slept = 0;
        let (left, _) = wait_active(&mut p, &units, &opts(), &mut |_| slept += 1).unwrap();
        assert_eq!(
            left,
            vec![("aperture-runtime.service".to_string(), "failed".to_string())]
        );
        assert_eq!(
            (p.asked, slept),
            (1, 0),
            "a failed unit must not be polled until the timeout"
        );
    }

    #[test]
    fn an_activating_unit_is_waited_for() {
        let mut p = Counting {
            state: "activating",
            asked: 0,
        };
        let units = vec!["aperture-runtime.service".to_string()];
        let mut slept = 0;
        let (left, waited) = wait_active(&mut p, &units, &opts(), &mut |_| slept += 1).unwrap();
        assert_eq!((left.len(), waited), (1, Duration::from_secs(120)));
        assert_eq!(p.asked, 120, "polled every second for the whole timeout");
        assert_eq!(slept, 119);
    }
}
