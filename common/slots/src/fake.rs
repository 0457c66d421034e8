//! [`FakeBootControl`]: an in-memory boot-control backend for tests, optionally kept in a JSON
//! file (written temp + rename + fsync folder) so that it survives a simulated crash, with fault
//! injection at the Nth persist.

use std::path::{Path, PathBuf};

use crate::manager::BootControl;
use crate::state::{apply_step, simulate_boot, BootState, Step};
use crate::{Slot, SlotsError};
use aperture_sys::fs::{read_optional, write_atomic};

/// Boot control held in memory or in one JSON file, for tests.
///
/// A fault set with [`FakeBootControl::fail_at_persist`] behaves like a power cut: that persist
/// call and every later one fail without changing anything, until [`BootControl::loader_boot`]
/// (the next power-on) or [`FakeBootControl::clear_fault`].
#[derive(Debug, Clone)]
pub struct FakeBootControl {
    state: BootState,
    file: Option<PathBuf>,
    calls: usize,
    fail_from: Option<usize>,
    log: Vec<Step>,
}

impl FakeBootControl {
    /// In memory, starting from `state`.
    pub fn new(state: BootState) -> FakeBootControl {
        FakeBootControl {
            state: state.normalized(),
            file: None,
            calls: 0,
            fail_from: None,
            log: Vec::new(),
        }
    }

    /// In memory, as freshly flashed: both slots good, A next.
    pub fn fresh() -> FakeBootControl {
        FakeBootControl::new(BootState::fresh())
    }

    /// Backed by the JSON file at `path`, which is created (freshly flashed state) if missing.
    /// Opening the same file again after dropping the backend is how tests simulate a crash.
    pub fn open(path: impl Into<PathBuf>) -> Result<FakeBootControl, SlotsError> {
        let path = path.into();
        let state = match read_optional(&path)? {
            Some(bytes) => parse(&path, &bytes)?,
            None => {
                let state = BootState::fresh();
                store(&path, &state)?;
                state
            }
        };
        Ok(FakeBootControl {
            file: Some(path),
            ..FakeBootControl::new(state)
        })
    }

    /// Backed by the JSON file at `path`, overwritten with `state`.
    pub fn create(
        path: impl Into<PathBuf>,
        state: BootState,
    ) -> Result<FakeBootControl, SlotsError> {
        let path = path.into();
        let state = state.normalized();
        store(&path, &state)?;
        Ok(FakeBootControl {
            file: Some(path),
            ..FakeBootControl::new(state)
        })
    }

    /// Make the `n`-th persist call from now (1 = the next one) and every later one fail with
    /// [`SlotsError::InjectedFault`]; `n = 0` is treated as 1.
    pub fn fail_at_persist(&mut self, n: usize) {
        self.fail_from = Some(self.calls + n.max(1));
    }

    /// Remove an injected fault.
    pub fn clear_fault(&mut self) {
        self.fail_from = None;
    }

    /// How many times `persist` was called (failed calls included).
    pub fn persist_calls(&self) -> usize {
        self.calls
    }

    /// The steps persisted successfully, in order.
    pub fn persisted(&self) -> &[Step] {
        &self.log
    }

    /// The JSON file, if file-backed.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    fn load(&self) -> Result<BootState, SlotsError> {
        match &self.file {
            None => Ok(self.state.clone()),
            Some(path) => match read_optional(path)? {
                Some(bytes) => parse(path, &bytes),
                None => Err(SlotsError::Malformed {
                    path: path.clone(),
                    reason: "the state file disappeared".into(),
                }),
            },
        }
    }

    fn save(&mut self, state: BootState) -> Result<(), SlotsError> {
        if let Some(path) = &self.file {
            store(path, &state)?;
        }
        self.state = state;
        Ok(())
    }
}

impl BootControl for FakeBootControl {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn read(&self) -> Result<BootState, SlotsError> {
        self.load()
    }

    fn persist(&mut self, step: &Step) -> Result<(), SlotsError> {
        self.calls += 1;
        if self.fail_from.is_some_and(|n| self.calls >= n) {
            return Err(SlotsError::InjectedFault { call: self.calls });
        }
        let after = apply_step(&self.load()?, step);
        self.save(after)?;
        self.log.push(step.clone());
        Ok(())
    }

    fn loader_boot(&mut self) -> Result<Slot, SlotsError> {
        self.fail_from = None;
        let (slot, after) = simulate_boot(&self.load()?)?;
        self.save(after)?;
        Ok(slot)
    }
}

fn parse(path: &Path, bytes: &[u8]) -> Result<BootState, SlotsError> {
    serde_json::from_slice::<BootState>(bytes)
        .map(BootState::normalized)
        .map_err(|e| SlotsError::Malformed {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

fn store(path: &Path, state: &BootState) -> Result<(), SlotsError> {
    let mut text = serde_json::to_string_pretty(state).map_err(|e| SlotsError::Malformed {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    text.push('\n');
    Ok(write_atomic(path, text.as_bytes(), 0o644)?)
}
