//! [`Recorder`]: an [`Installer`] that keeps what it is given, for tests of the loop (the
//! tier-1 tests here, the tier-2 tests against nginx). It reads each bundle to its end, as the
//! updater does before it arms a slot, so a target that fails its length or hash check is
//! never recorded.

use std::io::Read;

use crate::Installer;

/// Records installs and reboots; its floor and readiness are what the test sets.
#[derive(Debug, Default)]
pub struct Recorder {
    /// The floor it reports.
    pub floor: u64,
    /// Why an install cannot start now, if the test says so.
    pub not_ready: Option<String>,
    /// Each installed bundle's bytes and source.
    pub installs: Vec<(Vec<u8>, String)>,
    /// Reboots asked for.
    pub reboots: u32,
    /// Refuse (after reading it whole) a bundle whose bytes start with these.
    pub fail_when: Option<Vec<u8>>,
}

impl Installer for Recorder {
    fn floor(&mut self) -> Result<u64, String> {
        Ok(self.floor)
    }

    fn ready(&mut self) -> Result<(), String> {
        match &self.not_ready {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }

    fn install(&mut self, bundle: &mut dyn Read, source: &str) -> Result<String, String> {
        let mut bytes = Vec::new();
        bundle.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
        if self
            .fail_when
            .as_ref()
            .is_some_and(|prefix| bytes.starts_with(prefix))
        {
            return Err("refused by the test".into());
        }
        self.installs.push((bytes, source.to_string()));
        Ok("recorded".into())
    }

    fn reboot(&mut self) -> Result<(), String> {
        self.reboots += 1;
        Ok(())
    }
}
