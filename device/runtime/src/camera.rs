//! A camera's connection as a pure state machine: events and the time in, the next state out.
//! The camera thread ([`crate::service`]) does what the state asks (open the source, pull a
//! frame, close it, wait); nothing here touches a stream, so every path is tested in memory.
//!
//! ```text
//! Connecting --frame--> Streaming --no frame for `stall_after` / error--> Stalled
//!     |                                                                     |
//!     +--no frame for `connect_timeout` / error--> Stalled --source closed--> Backoff
//! Backoff --1 s, 2 s, 4 s ... 60 s elapsed--> Connecting
//! ```
//!
//! The backoff doubles with each failure in a row and starts again at 1 s once a frame arrives.

use std::time::{Duration, Instant};

/// How long the machine waits for what.
#[derive(Debug, Clone)]
pub struct Timing {
    /// From opening a stream to its first frame.
    pub connect_timeout: Duration,
    /// The longest gap between two frames of a streaming camera.
    pub stall_after: Duration,
    /// The first wait after a failure.
    pub backoff_first: Duration,
    /// The longest wait.
    pub backoff_max: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            connect_timeout: Duration::from_secs(10),
            stall_after: Duration::from_secs(5),
            backoff_first: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// Where a camera is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Its stream is being opened, since then.
    Connecting {
        /// When the source was asked for.
        since: Instant,
    },
    /// Frames arrive.
    Streaming {
        /// The last one.
        last_frame: Instant,
    },
    /// It stopped (no frame in time, or an error): its source must be closed.
    Stalled,
    /// Waiting before the next attempt.
    Backoff {
        /// Until then.
        until: Instant,
    },
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A frame arrived.
    Frame,
    /// Time passed without a frame (a pull timed out, or a wait ended).
    Tick,
    /// Opening or reading the stream failed.
    Error(String),
    /// The stalled source is closed.
    Closed,
}

/// One camera's machine.
#[derive(Debug, Clone)]
pub struct Camera {
    timing: Timing,
    state: State,
    /// Failures in a row (0 once a frame arrived).
    failures: u32,
    last_error: Option<String>,
    /// How often the stream was lost or could not be opened, over the process's life.
    stalls: u64,
}

impl Camera {
    /// A camera about to connect.
    pub fn new(timing: Timing, now: Instant) -> Camera {
        Camera {
            timing,
            state: State::Connecting { since: now },
            failures: 0,
            last_error: None,
            stalls: 0,
        }
    }

    /// Its state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The state as reported in the metrics: `connecting` (first attempt), `streaming`, or
    /// `stalled` (lost, waiting to retry, or retrying).
    pub fn report(&self) -> &'static str {
        match self.state {
            State::Streaming { .. } => "streaming",
            State::Connecting { .. } if self.failures == 0 && self.stalls == 0 => "connecting",
            _ => "stalled",
        }
    }

    /// The exact state's name (`connecting`, `streaming`, `stalled`, `backoff`).
    pub fn phase(&self) -> &'static str {
        match self.state {
            State::Connecting { .. } => "connecting",
            State::Streaming { .. } => "streaming",
            State::Stalled => "stalled",
            State::Backoff { .. } => "backoff",
        }
    }

    /// Failures in a row.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Times the stream was lost or failed to open.
    pub fn stalls(&self) -> u64 {
        self.stalls
    }

    /// Why it last failed.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The wait after the `n`th failure in a row (1-based): first, doubled each time, at most
    /// the maximum.
    pub fn backoff(&self, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(31);
        self.timing
            .backoff_first
            .saturating_mul(1u32 << doublings)
            .min(self.timing.backoff_max)
    }

    fn stall(&mut self, why: String) {
        self.failures = self.failures.saturating_add(1);
        self.stalls += 1;
        self.last_error = Some(why);
        self.state = State::Stalled;
    }

    /// Take an event at time `now`; returns the new state.
    pub fn on(&mut self, event: Event, now: Instant) -> State {
        match (self.state, event) {
            (State::Connecting { .. } | State::Streaming { .. }, Event::Frame) => {
                self.failures = 0;
                self.state = State::Streaming { last_frame: now };
            }
            (State::Connecting { since }, Event::Tick)
                if now.saturating_duration_since(since) >= self.timing.connect_timeout =>
            {
                self.stall(format!(
                    "no frame within {:?} of connecting",
                    self.timing.connect_timeout
                ));
            }
            (State::Streaming { last_frame }, Event::Tick)
                if now.saturating_duration_since(last_frame) >= self.timing.stall_after =>
            {
                self.stall(format!("no frame for {:?}", self.timing.stall_after));
            }
            (State::Connecting { .. } | State::Streaming { .. }, Event::Error(e)) => self.stall(e),
            (State::Stalled, Event::Closed) => {
                self.state = State::Backoff {
                    until: now + self.backoff(self.failures),
                };
            }
            (State::Backoff { until }, Event::Tick) if now >= until => {
                self.state = State::Connecting { since: now };
            }
            // Anything else changes nothing: a frame or an error from a source being closed,
            // a tick while stalled (the thread closes the source first), an early tick, a tick
            // before a timeout.
            _ => {}
        }
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_camera_connects_streams_stalls_backs_off_and_reconnects() {
        let t0 = Instant::now();
        let mut c = Camera::new(Timing::default(), t0);
        assert_eq!(c.report(), "connecting");
        assert_eq!(
            c.on(Event::Tick, t0 + s(2)),
            State::Connecting { since: t0 }
        );
        assert_eq!(
            c.on(Event::Frame, t0 + s(3)),
            State::Streaming {
                last_frame: t0 + s(3)
            }
        );
        assert_eq!(c.report(), "streaming");
        // A gap shorter than stall_after is still streaming.
        c.on(Event::Tick, t0 + s(7));
        assert_eq!(c.report(), "streaming");
        assert_eq!(c.on(Event::Tick, t0 + s(8)), State::Stalled);
        assert_eq!(c.report(), "stalled");
        assert_eq!(c.stalls(), 1);
        assert_eq!(c.last_error(), Some("no frame for 5s"));
        // A late frame from the source being closed does not revive it.
        assert_eq!(c.on(Event::Frame, t0 + s(8)), State::Stalled);
        assert_eq!(
            c.on(Event::Closed, t0 + s(8)),
            State::Backoff { until: t0 + s(9) }
        );
        assert_eq!(c.report(), "stalled");
        assert_eq!(
            c.on(Event::Tick, t0 + s(8)),
            State::Backoff { until: t0 + s(9) }
        );
        assert_eq!(
            c.on(Event::Tick, t0 + s(9)),
            State::Connecting { since: t0 + s(9) }
        );
        // Reconnecting after a stall still reads stalled until a frame arrives.
        assert_eq!(c.report(), "stalled");
        c.on(Event::Frame, t0 + s(10));
        assert_eq!(c.report(), "streaming");
        assert_eq!(c.failures(), 0);
    }

    #[test]
    fn failures_in_a_row_double_the_wait_up_to_a_minute_and_a_frame_resets_it() {
        let t0 = Instant::now();
        let mut c = Camera::new(Timing::default(), t0);
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..9 {
            assert_eq!(
                c.on(Event::Error("connection refused".into()), now),
                State::Stalled
            );
            let State::Backoff { until } = c.on(Event::Closed, now) else {
                panic!("not backing off: {c:?}");
            };
            waits.push((until - now).as_secs());
            now = until;
            assert!(matches!(c.on(Event::Tick, now), State::Connecting { .. }));
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(c.last_error(), Some("connection refused"));
        c.on(Event::Frame, now);
        c.on(Event::Error("eof".into()), now);
        let State::Backoff { until } = c.on(Event::Closed, now) else {
            panic!("not backing off: {c:?}");
        };
        assert_eq!(until - now, s(1), "a frame starts the backoff again");
    }

    #[test]
    fn a_camera_that_never_sends_a_frame_times_out_of_connecting() {
        let t0 = Instant::now();
        let mut c = Camera::new(Timing::default(), t0);
        assert!(matches!(
            c.on(Event::Tick, t0 + s(9)),
            State::Connecting { .. }
        ));
        assert_eq!(c.on(Event::Tick, t0 + s(10)), State::Stalled);
        assert_eq!(c.phase(), "stalled");
        assert!(c.last_error().unwrap().contains("no frame within 10s"));
    }

    #[test]
    fn the_backoff_never_overflows() {
        let c = Camera::new(Timing::default(), Instant::now());
        assert_eq!(c.backoff(1), s(1));
        assert_eq!(c.backoff(u32::MAX), s(60));
    }
}
