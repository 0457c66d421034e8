//! The small traits that keep hardware and time out of the reset logic, each with the real
//! implementation and a test double: [`Clock`], [`Reboot`], [`Discard`]; and [`Faults`], the
//! power-cut injector that tests set and the real program leaves empty, with [`FaultsIo`], which
//! puts the updater's installer (every slot write of a reset) under the same injector.

use std::cell::Cell;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aperture_updater::disk::PartitionHandle;
use aperture_updater::io::{Io, RealIo};

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
/// Shared (an `Arc`) between the reset's partitions ([`crate::io::GuardedDisk`]) and the
/// updater's installer ([`FaultsIo`]), so one count covers every write of a reset.
#[derive(Debug, Default)]
pub struct Faults {
    point: Option<FaultPoint>,
    writes: AtomicU64,
    fired: AtomicBool,
    log: Mutex<Vec<String>>,
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

    /// Writes seen so far (partition writes, and the installer's writes, renames, removals
    /// and boot-control steps).
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Whether the power cut happened.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// What was cut, in order.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Called before every write: fails at the chosen write, and at every one after a cut.
    pub fn on_write(&self, what: &str) -> std::io::Result<()> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fired() || self.point == Some(FaultPoint::Write(n)) {
            self.fired.store(true, Ordering::SeqCst);
            if let Ok(mut log) = self.log.lock() {
                log.push(format!("write {n}: {what}"));
            }
            return Err(std::io::Error::other(format!(
                "injected power cut at partition write {n}"
            )));
        }
        Ok(())
    }

    /// Called before what is not counted as a write (an fsync): fails once the power is off.
    pub fn alive(&self) -> std::io::Result<()> {
        if self.fired() {
            return Err(std::io::Error::other(
                "injected power cut earlier: the power is off",
            ));
        }
        Ok(())
    }

    /// Called at step boundaries: fails at the chosen one.
    pub fn check(&self, point: FaultPoint) -> Result<(), ResetError> {
        if self.fired() || self.point == Some(point) {
            self.fired.store(true, Ordering::SeqCst);
            return Err(ResetError::InjectedFault {
                point: point.to_string(),
            });
        }
        Ok(())
    }
}

/// The updater's [`aperture_updater::io::Io`] seam under [`Faults`]: every partition write,
/// file write, rename, removal and boot-control step of the installer counts as a write and
/// can be cut; fsyncs fail once the power is off. What was written stays (a cut keeps the
/// writes that happened, the reset's model of a power cut).
#[derive(Debug, Clone)]
pub struct FaultsIo(pub Arc<Faults>);

impl Io for FaultsIo {
    fn write_at(
        &self,
        part: &mut dyn PartitionHandle,
        buf: &[u8],
        offset: u64,
    ) -> std::io::Result<()> {
        self.0.on_write(&format!(
            "{} bytes at {offset} of {}",
            buf.len(),
            part.describe()
        ))?;
        part.write_all_at(buf, offset)
    }

    fn sync(&self, part: &mut dyn PartitionHandle) -> std::io::Result<()> {
        self.0.alive()?;
        part.sync()
    }

    fn create(&self, path: &Path) -> std::io::Result<File> {
        self.0.alive()?;
        RealIo.create(path)
    }

    fn write(&self, file: &mut File, path: &Path, buf: &[u8]) -> std::io::Result<()> {
        self.0
            .on_write(&format!("{} bytes to {}", buf.len(), path.display()))?;
        std::io::Write::write_all(file, buf)
    }

    fn sync_file(&self, file: &File, _path: &Path) -> std::io::Result<()> {
        self.0.alive()?;
        file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.0
            .on_write(&format!("rename {} -> {}", from.display(), to.display()))?;
        std::fs::rename(from, to)
    }

    fn sync_path(&self, path: &Path) -> std::io::Result<()> {
        self.0.alive()?;
        File::open(path)?.sync_all()
    }

    fn remove(&self, path: &Path) -> std::io::Result<()> {
        self.0.on_write(&format!("remove {}", path.display()))?;
        std::fs::remove_file(path)
    }

    fn create_dir_all(&self, path: &Path) -> std::io::Result<()> {
        self.0.alive()?;
        std::fs::create_dir_all(path)
    }

    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.0.alive()?;
        File::open(dir)?.sync_all()
    }

    fn step(&self, what: &str) -> std::io::Result<()> {
        self.0.on_write(&format!("boot control: {what}"))
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
