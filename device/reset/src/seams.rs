//! The small traits that keep hardware and time out of the reset logic, each with the real
//! implementation and a test double: [`Clock`], [`Reboot`], [`Discard`]; and [`Faults`], the
//! power-cut injector that tests set and the real program leaves empty.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use aperture_storage::Partition;
use aperture_sys::Cmd;

use crate::ResetError;

/// Wall-clock and monotonic time.
pub trait Clock {
    /// Seconds since the Unix epoch. Reset judges no key expiry by it: what it verifies
    /// (the factory image, installed slots) was verified when it was written.
    fn now_unix(&self) -> u64;
    /// Time since this clock was made (for measuring a held input).
    fn elapsed(&self) -> Duration;
    /// Wait.
    fn sleep(&self, d: Duration);
}

/// The system clock.
#[derive(Debug)]
pub struct SystemClock {
    start: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            start: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now_unix(&self) -> u64 {
        aperture_trust::now_unix()
    }
    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// A clock that only moves when slept on.
#[derive(Debug)]
pub struct FakeClock {
    unix: u64,
    mono: Cell<Duration>,
}

impl FakeClock {
    /// Starting at `unix` seconds.
    pub fn new(unix: u64) -> FakeClock {
        FakeClock {
            unix,
            mono: Cell::new(Duration::ZERO),
        }
    }
}

impl Clock for FakeClock {
    fn now_unix(&self) -> u64 {
        self.unix + self.mono.get().as_secs()
    }
    fn elapsed(&self) -> Duration {
        self.mono.get()
    }
    fn sleep(&self, d: Duration) {
        self.mono.set(self.mono.get() + d);
    }
}

/// Restarting the appliance.
pub trait Reboot {
    /// Ask for a reboot. Returns once it is requested; the caller then exits.
    fn reboot(&self) -> Result<(), ResetError>;
}

/// `systemctl reboot`.
#[derive(Debug, Default)]
pub struct SystemReboot;

impl Reboot for SystemReboot {
    fn reboot(&self) -> Result<(), ResetError> {
        Cmd::new("systemctl").arg("reboot").run()?;
        Ok(())
    }
}

/// Counts reboot requests.
#[derive(Debug, Default)]
pub struct FakeReboot {
    count: Cell<u32>,
}

impl FakeReboot {
    /// Requests so far.
    pub fn count(&self) -> u32 {
        self.count.get()
    }
}

impl Reboot for FakeReboot {
    fn reboot(&self) -> Result<(), ResetError> {
        self.count.set(self.count.get() + 1);
        Ok(())
    }
}

/// Why a discard did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DiscardError {
    /// The device (or file range) cannot discard.
    #[error("discard is not supported: {0}")]
    Unsupported(String),
    /// The discard ran and failed.
    #[error("discard failed: {0}")]
    Failed(String),
}

/// Discarding (TRIM/UNMAP) a whole partition.
pub trait Discard {
    /// Discard every block of `part`.
    fn discard(&self, part: &dyn Partition) -> Result<(), DiscardError>;
}

/// `blkdiscard` on the partition's block device (util-linux opens it `O_EXCL`, so a mounted
/// or mapped partition is refused).
#[derive(Debug, Default)]
pub struct BlkDiscard;

impl Discard for BlkDiscard {
    fn discard(&self, part: &dyn Partition) -> Result<(), DiscardError> {
        let Some(device) = part.device() else {
            return Err(DiscardError::Unsupported(format!(
                "{} is not a block device",
                part.describe()
            )));
        };
        let out = Cmd::new("blkdiscard")
            .arg(device)
            .output()
            .map_err(|e| DiscardError::Failed(e.to_string()))?;
        match out.code {
            Some(0) => Ok(()),
            _ if out.stderr.contains("not supported") => {
                Err(DiscardError::Unsupported(out.stderr.trim().to_string()))
            }
            _ => Err(DiscardError::Failed(aperture_sys::cmd::tail(&out.stderr))),
        }
    }
}

/// How the fake discard behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeDiscardMode {
    /// Zeroes the partition, as a loop device or a thin volume does.
    Zeroes,
    /// Reports that discard is not supported.
    Unsupported,
    /// Claims success and leaves the data (flash whose discarded blocks still read back).
    LeavesData,
}

/// Test double of [`Discard`].
#[derive(Debug)]
pub struct FakeDiscard {
    mode: FakeDiscardMode,
    calls: Cell<u32>,
}

impl FakeDiscard {
    /// A discard behaving as `mode`.
    pub fn new(mode: FakeDiscardMode) -> FakeDiscard {
        FakeDiscard {
            mode,
            calls: Cell::new(0),
        }
    }

    /// Calls so far.
    pub fn calls(&self) -> u32 {
        self.calls.get()
    }
}

impl Discard for FakeDiscard {
    fn discard(&self, part: &dyn Partition) -> Result<(), DiscardError> {
        self.calls.set(self.calls.get() + 1);
        match self.mode {
            FakeDiscardMode::Unsupported => Err(DiscardError::Unsupported(
                "fake device without discard".into(),
            )),
            FakeDiscardMode::LeavesData => Ok(()),
            FakeDiscardMode::Zeroes => {
                let chunk = vec![0u8; 1 << 20];
                let mut at = 0;
                while at < part.size() {
                    let n = (part.size() - at).min(chunk.len() as u64) as usize;
                    part.write_all_at(&chunk[..n], at)
                        .map_err(|e| DiscardError::Failed(e.to_string()))?;
                    at += n as u64;
                }
                Ok(())
            }
        }
    }
}

/// Where a test cuts the power.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// Before step `k` does anything (the journal names it).
    BeforeStep(usize),
    /// After step `k` did its work, before the journal is advanced past it.
    AfterStep(usize),
    /// At the `n`-th partition write (1-based) from the start of the run.
    Write(u64),
}

impl std::fmt::Display for FaultPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FaultPoint::BeforeStep(k) => write!(f, "the start of step {k}"),
            FaultPoint::AfterStep(k) => write!(f, "the end of step {k}"),
            FaultPoint::Write(n) => write!(f, "partition write {n}"),
        }
    }
}

/// Power-cut injection. Empty in the real program; tests arm one point. Once it fired,
/// everything fails, as after a real power cut, until the test "reboots" with a new one.
#[derive(Debug, Default)]
pub struct Faults {
    point: Option<FaultPoint>,
    writes: Cell<u64>,
    fired: Cell<bool>,
    log: RefCell<Vec<String>>,
}

impl Faults {
    /// No faults.
    pub fn none() -> Faults {
        Faults::default()
    }

    /// A power cut at `point`.
    pub fn at(point: FaultPoint) -> Faults {
        Faults {
            point: Some(point),
            ..Faults::default()
        }
    }

    /// Partition writes seen so far.
    pub fn writes(&self) -> u64 {
        self.writes.get()
    }

    /// Whether the power cut happened.
    pub fn fired(&self) -> bool {
        self.fired.get()
    }

    /// Called before every partition write: fails at the chosen write.
    pub fn on_write(&self, what: &str) -> std::io::Result<()> {
        let n = self.writes.get() + 1;
        self.writes.set(n);
        if self.fired.get() || self.point == Some(FaultPoint::Write(n)) {
            self.fired.set(true);
            self.log.borrow_mut().push(format!("write {n}: {what}"));
            return Err(std::io::Error::other(format!(
                "injected power cut at partition write {n}"
            )));
        }
        Ok(())
    }

    /// Called at step boundaries: fails at the chosen one.
    pub fn check(&self, point: FaultPoint) -> Result<(), ResetError> {
        if self.fired.get() || self.point == Some(point) {
            self.fired.set(true);
            return Err(ResetError::InjectedFault {
                point: point.to_string(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aperture_storage::MemPartition;

    #[test]
    fn fake_clock_moves_only_when_slept() {
        let c = FakeClock::new(1000);
        assert_eq!(c.elapsed(), Duration::ZERO);
        c.sleep(Duration::from_secs(3));
        assert_eq!(c.elapsed(), Duration::from_secs(3));
        assert_eq!(c.now_unix(), 1003);
    }

    #[test]
    fn fake_discard_modes() {
        let part = MemPartition::new("data", vec![7u8; 3 << 20]);
        FakeDiscard::new(FakeDiscardMode::LeavesData)
            .discard(&part)
            .unwrap();
        assert!(part.bytes().iter().all(|b| *b == 7));
        assert!(matches!(
            FakeDiscard::new(FakeDiscardMode::Unsupported).discard(&part),
            Err(DiscardError::Unsupported(_))
        ));
        FakeDiscard::new(FakeDiscardMode::Zeroes)
            .discard(&part)
            .unwrap();
        assert!(part.bytes().iter().all(|b| *b == 0));
        assert!(matches!(
            BlkDiscard.discard(&part),
            Err(DiscardError::Unsupported(_))
        ));
    }

    #[test]
    fn faults_fire_once_and_stay_fired() {
        let f = Faults::at(FaultPoint::Write(2));
        f.on_write("a").unwrap();
        assert!(f.on_write("b").is_err());
        assert!(f.fired());
        assert!(
            f.check(FaultPoint::BeforeStep(9)).is_err(),
            "after a power cut nothing runs"
        );
        let f = Faults::at(FaultPoint::AfterStep(1));
        f.check(FaultPoint::AfterStep(0)).unwrap();
        assert!(f.check(FaultPoint::AfterStep(1)).unwrap_err().is_injected());
    }
}
