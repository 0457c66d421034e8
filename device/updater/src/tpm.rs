//! The anti-rollback floor and the accepted keyring sequence in TPM NV counters too, where the
//! board has a TPM (`BuildFacts::tpm`). The state store is plain bytes on a partition: anyone
//! with root could write a lower floor into it. A TPM NV counter (`TPM_NT_COUNTER`) can only be
//! incremented, and even deleting and redefining it cannot lower it (the TPM starts a new
//! counter above every counter it ever deleted, TPM 2.0 Part 1, "NV Counter Index").
//!
//! The effective floor is the higher of the store's and the counter's ([`Counters::read`]);
//! a commit raises the counter to the committed floor by incrementing it
//! ([`Counters::raise`]), so a counter may run ahead of the store but never behind it.
//!
//! | counter | NV index |
//! |---|---|
//! | [`Counter::SecurityFloor`] | `0x01500A70` |
//! | [`Counter::KeyringSequence`] | `0x01500A71` |
//!
//! [`Tpm2Tools`] drives tpm2-tools through `aperture_sys::Cmd` (`tpm2_nvreadpublic`,
//! `tpm2_nvdefine`, `tpm2_nvincrement`, `tpm2_nvread`, owner hierarchy, the TCTI in
//! `TPM2TOOLS_TCTI`); [`FakeCounters`] is the tier-1 tests' TPM; [`NoTpm`] the boards without
//! one.

use std::sync::{Arc, Mutex};

use aperture_sys::{Cmd, CmdError};

use crate::UpdateError;

/// A monotonic counter the updater keeps in the TPM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    /// The anti-rollback floor.
    SecurityFloor,
    /// The highest keyring sequence committed.
    KeyringSequence,
}

impl Counter {
    /// Both counters.
    pub const ALL: [Counter; 2] = [Counter::SecurityFloor, Counter::KeyringSequence];

    /// Its NV index.
    pub fn index(self) -> u32 {
        match self {
            Counter::SecurityFloor => 0x0150_0A70,
            Counter::KeyringSequence => 0x0150_0A71,
        }
    }

    /// Name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Counter::SecurityFloor => "anti-rollback floor",
            Counter::KeyringSequence => "keyring sequence",
        }
    }

    fn handle(self) -> String {
        format!("{:#x}", self.index())
    }
}

/// Monotonic counters kept outside the state store.
pub trait Counters: Send + Sync {
    /// Where they are, for messages.
    fn describe(&self) -> String;
    /// The counter's value; 0 if it was never defined or written.
    fn read(&self, counter: Counter) -> Result<u64, UpdateError>;
    /// Raise the counter to at least `to` (incrementing it); returns its value then.
    fn raise(&self, counter: Counter, to: u64) -> Result<u64, UpdateError>;
}

/// A board without a TPM: every counter reads 0 and raising does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTpm;

impl Counters for NoTpm {
    fn describe(&self) -> String {
        "no TPM".into()
    }
    fn read(&self, _counter: Counter) -> Result<u64, UpdateError> {
        Ok(0)
    }
    fn raise(&self, _counter: Counter, _to: u64) -> Result<u64, UpdateError> {
        Ok(0)
    }
}

/// Counters in memory for tests; clones share them. Raising only goes up, as in a TPM; a
/// failing fake fails every call, as an absent or broken TPM does.
#[derive(Debug, Clone, Default)]
pub struct FakeCounters {
    inner: Arc<Mutex<FakeState>>,
}

#[derive(Debug, Default)]
struct FakeState {
    floor: u64,
    keyring: u64,
    failing: bool,
}

impl FakeCounters {
    /// Both counters at 0.
    pub fn new() -> FakeCounters {
        FakeCounters::default()
    }

    /// Make every call fail (`true`) or work again.
    pub fn set_failing(&self, failing: bool) {
        self.state().failing = failing;
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Counters for FakeCounters {
    fn describe(&self) -> String {
        "fake TPM".into()
    }

    fn read(&self, counter: Counter) -> Result<u64, UpdateError> {
        let s = self.state();
        if s.failing {
            return Err(fake_failure(counter));
        }
        Ok(match counter {
            Counter::SecurityFloor => s.floor,
            Counter::KeyringSequence => s.keyring,
        })
    }

    fn raise(&self, counter: Counter, to: u64) -> Result<u64, UpdateError> {
        let mut s = self.state();
        if s.failing {
            return Err(fake_failure(counter));
        }
        let value = match counter {
            Counter::SecurityFloor => &mut s.floor,
            Counter::KeyringSequence => &mut s.keyring,
        };
        *value = (*value).max(to);
        Ok(*value)
    }
}

fn fake_failure(counter: Counter) -> UpdateError {
    UpdateError::Tpm {
        op: "reading",
        counter: counter.name(),
        index: counter.index(),
        err: CmdError {
            command: "fake TPM".into(),
            status: "failing (FakeCounters::set_failing)".into(),
            stderr: String::new(),
        },
    }
}

/// Most increments one [`Counters::raise`] makes: security versions and keyring sequences are
/// small numbers, and each increment is one command.
pub const MAX_INCREMENTS: u64 = 4096;

/// NV attributes of the counters: a counter, read and incremented with owner authorization,
/// without dictionary-attack lockout (the owner password is empty on an appliance).
const ATTRIBUTES: &str = "nt=counter|ownerread|ownerwrite|authread|authwrite|no_da";

/// The counters in a TPM, through tpm2-tools.
#[derive(Debug, Clone)]
pub struct Tpm2Tools {
    tcti: String,
}

impl Tpm2Tools {
    /// The TPM reached through the TCTI `tcti` (`device:/dev/tpmrm0`, `swtpm:port=2321`).
    pub fn new(tcti: impl Into<String>) -> Tpm2Tools {
        Tpm2Tools { tcti: tcti.into() }
    }

    /// The appliance's TPM through its resource manager device.
    pub fn device(path: &std::path::Path) -> Tpm2Tools {
        Tpm2Tools::new(format!("device:{}", path.display()))
    }

    fn cmd(&self, tool: &str) -> Cmd {
        Cmd::new(tool).env("TPM2TOOLS_TCTI", &self.tcti)
    }

    fn run(&self, op: &'static str, counter: Counter, cmd: Cmd) -> Result<Vec<u8>, UpdateError> {
        cmd.run()
            .map(|out| out.stdout)
            .map_err(|err| UpdateError::Tpm {
                op,
                counter: counter.name(),
                index: counter.index(),
                err,
            })
    }

    /// Whether the index is defined, and whether it was ever written.
    fn public(&self, counter: Counter) -> Result<(bool, bool), UpdateError> {
        // `tpm2_nvreadpublic INDEX` of an undefined index fails (and crashes in tpm2-tools
        // 5.4), so list them all.
        let out = self.run(
            "listing the NV indices for",
            counter,
            self.cmd("tpm2_nvreadpublic"),
        )?;
        Ok(parse_public(
            &String::from_utf8_lossy(&out),
            counter.index(),
        ))
    }
}

/// `(defined, written)` of NV index `index` in `tpm2_nvreadpublic`'s YAML listing.
fn parse_public(listing: &str, index: u32) -> (bool, bool) {
    let head = format!("{index:#x}:");
    let mut lines = listing.lines();
    if !lines.any(|l| l.trim() == head) {
        return (false, false);
    }
    let written = lines
        .take_while(|l| l.starts_with(' ') || l.is_empty())
        .filter_map(|l| l.trim().strip_prefix("friendly:"))
        .any(|attrs| attrs.split('|').any(|a| a.trim() == "written"));
    (true, written)
}

impl Counters for Tpm2Tools {
    fn describe(&self) -> String {
        format!("the TPM ({})", self.tcti)
    }

    fn read(&self, counter: Counter) -> Result<u64, UpdateError> {
        if self.public(counter)? != (true, true) {
            return Ok(0);
        }
        let out = self.run(
            "reading",
            counter,
            self.cmd("tpm2_nvread")
                .args(["-C", "o", "-s", "8"])
                .arg(counter.handle()),
        )?;
        let bytes: [u8; 8] = out.as_slice().try_into().map_err(|_| UpdateError::Tpm {
            op: "reading",
            counter: counter.name(),
            index: counter.index(),
            err: CmdError {
                command: "tpm2_nvread".into(),
                status: format!("printed {} bytes instead of 8", out.len()),
                stderr: String::new(),
            },
        })?;
        Ok(u64::from_be_bytes(bytes))
    }

    fn raise(&self, counter: Counter, to: u64) -> Result<u64, UpdateError> {
        let (defined, written) = self.public(counter)?;
        let mut value = if written { self.read(counter)? } else { 0 };
        if value >= to {
            return Ok(value);
        }
        if !defined {
            self.run(
                "defining",
                counter,
                self.cmd("tpm2_nvdefine")
                    .arg(counter.handle())
                    .args(["-C", "o", "-s", "8", "-a", ATTRIBUTES]),
            )?;
        }
        let increment = || {
            self.run(
                "incrementing",
                counter,
                self.cmd("tpm2_nvincrement")
                    .args(["-C", "o"])
                    .arg(counter.handle()),
            )
        };
        if !written {
            // The first increment starts the counter above every counter the TPM deleted.
            increment()?;
            value = self.read(counter)?;
        }
        let steps = to.saturating_sub(value);
        if steps > MAX_INCREMENTS {
            return Err(UpdateError::Tpm {
                op: "raising",
                counter: counter.name(),
                index: counter.index(),
                err: CmdError {
                    command: "tpm2_nvincrement".into(),
                    status: format!(
                        "{steps} increments (from {value} to {to}) are more than the \
                         {MAX_INCREMENTS} one commit makes; the state store keeps the value"
                    ),
                    stderr: String::new(),
                },
            });
        }
        for _ in 0..steps {
            increment()?;
        }
        self.read(counter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "0x1500a70:\n  name: 000b52\n  hash algorithm:\n    friendly: sha256\n    value: 0xB\n  attributes:\n    friendly: ownerwrite|authwrite|nt=0x1|ownerread|authread|no_da|written\n    value: 0x22060016\n  size: 8\n\n0x1500a71:\n  name: 000b90\n  hash algorithm:\n    friendly: sha256\n    value: 0xB\n  attributes:\n    friendly: ownerwrite|authwrite|nt=0x1|ownerread|authread|no_da\n    value: 0x2060016\n  size: 8\n\n";

    #[test]
    fn the_listing_says_which_counters_exist_and_were_written() {
        assert_eq!(parse_public(LISTING, 0x0150_0A70), (true, true));
        assert_eq!(parse_public(LISTING, 0x0150_0A71), (true, false));
        assert_eq!(parse_public(LISTING, 0x0150_0A72), (false, false));
        assert_eq!(parse_public("", 0x0150_0A70), (false, false));
    }

    #[test]
    fn fake_counters_only_go_up_and_can_fail() {
        let c = FakeCounters::new();
        assert_eq!(c.raise(Counter::SecurityFloor, 3).unwrap(), 3);
        assert_eq!(c.raise(Counter::SecurityFloor, 2).unwrap(), 3);
        assert_eq!(c.read(Counter::KeyringSequence).unwrap(), 0);
        c.set_failing(true);
        let e = c.read(Counter::SecurityFloor).unwrap_err().to_string();
        assert!(
            e.contains("anti-rollback floor") && e.contains("0x1500a70"),
            "{e}"
        );
        assert_eq!(NoTpm.raise(Counter::SecurityFloor, 9).unwrap(), 0);
    }
}
