//! systemd's watchdog as sd_watchdog_enabled(3) describes it: the service manager sets
//! `WATCHDOG_USEC` (the unit's `WatchdogSec=`) and, when the variable may be inherited by
//! other processes, `WATCHDOG_PID`. A process whose pid is not `WATCHDOG_PID` must not send
//! `WATCHDOG=1`; the one it is meant for sends it at least every half interval.
//!
//! [`Pace`] turns the interval into the service loop's timing: how often it looks at its
//! threads and pings, and how long a thread may stay silent before the pings stop (so that a
//! hung thread gets the unit restarted within about one and a half intervals, never sooner
//! than an inference on a slow CPU may take).

use std::time::Duration;

/// The service loop's tick when no watchdog is asked for (the metrics file's rewrite).
pub const TICK: Duration = Duration::from_millis(500);
/// A thread silent for this long stops the pings, whatever the interval.
pub const HEARTBEAT_LIMIT: Duration = Duration::from_secs(10);
/// ... and one silent for less never does: one inference on an emulated or busy CPU.
pub const HEARTBEAT_FLOOR: Duration = Duration::from_secs(2);

/// The watchdog systemd asked this process to feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watchdog {
    /// `WATCHDOG_USEC`: the unit is killed when no ping came for this long.
    pub interval: Duration,
}

impl Watchdog {
    /// From this process's environment; `Ok(None)` when no watchdog is meant for it.
    pub fn from_env() -> Result<Option<Watchdog>, String> {
        let var = |name: &str| std::env::var(name).ok();
        Watchdog::parse(
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
            std::process::id(),
        )
    }

    /// The rules of sd_watchdog_enabled(3) on the two variables' values: no `WATCHDOG_USEC`,
    /// or a `WATCHDOG_PID` that is another process's, means none. A value that is not a
    /// positive number is an error naming the variable (systemd never sets one).
    pub fn parse(
        usec: Option<&str>,
        pid: Option<&str>,
        own_pid: u32,
    ) -> Result<Option<Watchdog>, String> {
        let Some(usec) = usec else {
            return Ok(None);
        };
        let usec: u64 = match usec.trim().parse() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(format!(
                    "WATCHDOG_USEC={usec:?} is not a positive number of microseconds: \
                     set the unit's WatchdogSec= to a time, or unset the variable"
                ))
            }
        };
        if let Some(pid) = pid {
            match pid.trim().parse::<u32>() {
                Ok(p) if p == own_pid => {}
                Ok(p) if p > 0 => return Ok(None),
                _ => {
                    return Err(format!(
                        "WATCHDOG_PID={pid:?} is not a process id: unset it, or set the \
                         pid of the process systemd watches"
                    ))
                }
            }
        }
        Ok(Some(Watchdog {
            interval: Duration::from_micros(usec),
        }))
    }
}

/// The service loop's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    /// How often the loop rewrites the metrics, looks at its threads and pings.
    pub tick: Duration,
    /// A thread silent for longer stops the pings.
    pub heartbeat_limit: Duration,
}

impl Default for Pace {
    fn default() -> Pace {
        Pace::new(None)
    }
}

impl Pace {
    /// For `watchdog` (or none): pings at least every half interval, and a silent thread
    /// stops them after half an interval, between [`HEARTBEAT_FLOOR`] and
    /// [`HEARTBEAT_LIMIT`].
    pub fn new(watchdog: Option<Watchdog>) -> Pace {
        match watchdog {
            None => Pace {
                tick: TICK,
                heartbeat_limit: HEARTBEAT_LIMIT,
            },
            Some(w) => {
                let half = w.interval / 2;
                Pace {
                    tick: TICK.min(half).max(Duration::from_millis(10)),
                    heartbeat_limit: half.clamp(HEARTBEAT_FLOOR, HEARTBEAT_LIMIT),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(usec: Option<&str>, pid: Option<&str>) -> Result<Option<Watchdog>, String> {
        Watchdog::parse(usec, pid, 4242)
    }

    #[test]
    fn the_variables_decide_whether_the_watchdog_is_ours() {
        let ours = Some(Watchdog {
            interval: Duration::from_secs(30),
        });
        assert_eq!(parse(None, None), Ok(None));
        assert_eq!(parse(None, Some("4242")), Ok(None));
        assert_eq!(parse(Some("30000000"), None), Ok(ours));
        assert_eq!(parse(Some("30000000"), Some("4242")), Ok(ours));
        assert_eq!(
            parse(Some("30000000"), Some("17")),
            Ok(None),
            "another process's watchdog"
        );
        for bad in ["", "0", "-5", "30s", "1e6"] {
            let e = parse(Some(bad), None).unwrap_err();
            assert!(
                e.contains("WATCHDOG_USEC") && e.contains("WatchdogSec"),
                "{e}"
            );
        }
        for bad in ["", "0", "pid", "-1"] {
            let e = parse(Some("1000000"), Some(bad)).unwrap_err();
            assert!(e.contains("WATCHDOG_PID"), "{e}");
        }
    }

    #[test]
    fn the_pace_pings_twice_an_interval_and_gives_up_on_a_silent_thread_in_time() {
        let pace = |s: f64| {
            Pace::new(Some(Watchdog {
                interval: Duration::from_secs_f64(s),
            }))
        };
        assert_eq!(Pace::new(None), Pace::default());
        assert_eq!(Pace::default().tick, TICK);
        // The image's WatchdogSec=30.
        let p = pace(30.0);
        assert_eq!((p.tick, p.heartbeat_limit), (TICK, HEARTBEAT_LIMIT));
        let p = pace(6.0);
        assert_eq!(p.heartbeat_limit, Duration::from_secs(3));
        let p = pace(0.4);
        assert_eq!(p.tick, Duration::from_millis(200));
        assert_eq!(p.heartbeat_limit, HEARTBEAT_FLOOR);
        assert_eq!(pace(0.001).tick, Duration::from_millis(10));
        for s in [0.001, 0.4, 1.0, 6.0, 30.0, 600.0] {
            let p = pace(s);
            assert!(p.tick * 2 <= Duration::from_secs_f64(s).max(Duration::from_millis(20)));
            assert!(p.heartbeat_limit >= HEARTBEAT_FLOOR && p.heartbeat_limit <= HEARTBEAT_LIMIT);
        }
    }
}
