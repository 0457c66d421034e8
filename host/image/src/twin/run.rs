//! `vm run --twin`: the twin booted by hand, power-on after power-on, with its console on this
//! terminal. Every guest reboot ends that QEMU process (`-no-reboot`); the harness applies the
//! firmware's rules and starts the next boot. The guest powering off (or QEMU failing, or the
//! user interrupting it) ends the run.

use std::io::{Read, Write};
use std::process::{ExitStatus, Stdio};

use anyhow::{Context, Result};

use super::Twin;
use crate::qemu::{self, VmConfig};

/// How one boot of the twin ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The guest rebooted (or panicked and rebooted): the harness powers it on again.
    Rebooted,
    /// The guest powered off or halted.
    PoweredOff,
    /// QEMU failed or was stopped (a signal, a non-zero exit).
    Stopped,
}

/// How a boot ended, from the end of its console and QEMU's exit status. Linux prints
/// `reboot: Power down` / `reboot: System halted` when it powers off or halts
/// (`kernel/reboot.c`, at KERN_EMERG, so whatever the log level); anything else that ends
/// QEMU cleanly under `-no-reboot` is a reset request.
pub fn classify(console_tail: &str, status: Option<ExitStatus>) -> Ending {
    match status.and_then(|s| s.code()) {
        Some(0) => {}
        _ => return Ending::Stopped,
    }
    let off = ["reboot: Power down", "reboot: System halted"];
    let last_off = off.iter().filter_map(|m| console_tail.rfind(m)).max();
    let last_reboot = ["reboot: Restarting system", "Rebooting in "]
        .iter()
        .filter_map(|m| console_tail.rfind(m))
        .max();
    match (last_off, last_reboot) {
        (Some(o), Some(r)) if r > o => Ending::Rebooted,
        (Some(_), _) => Ending::PoweredOff,
        _ => Ending::Rebooted,
    }
}

/// Boot `twin` until its guest powers off: apply the rules, boot, repeat after every reboot.
/// The console is this terminal (input included); `tweak` adjusts each boot's QEMU
/// configuration (accelerator, memory, port forwards).
pub fn run_interactive(twin: &mut Twin, tweak: impl Fn(&mut VmConfig)) -> Result<()> {
    loop {
        let p = twin
            .power_on()
            .with_context(|| format!("powering on the twin in {}", twin.dir().display()))?;
        eprintln!("{p}");
        let mut cfg = twin.vm_config(&p);
        tweak(&mut cfg);
        let tpm = if qemu::swtpm_available() {
            let tpm = qemu::Swtpm::start(&twin.tpm_dir())?;
            cfg.tpm_socket = Some(tpm.socket().to_path_buf());
            Some(tpm)
        } else {
            eprintln!(
                "swtpm is not installed, so the twin has no TPM: the appliance waits for one and \
                 does not open its data (apt-get install swtpm)"
            );
            None
        };
        let mut child = cfg
            .command()?
            .stdin(Stdio::inherit())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting QEMU (package qemu-system-arm)")?;
        let mut out = child.stdout.take().context("QEMU's console")?;
        // Echo the console as it comes (prompts end without a newline) and keep its end.
        let mut tail = Vec::new();
        let mut buf = [0u8; 4096];
        let mut term = std::io::stdout();
        loop {
            let n = match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let _ = term.write_all(&buf[..n]);
            let _ = term.flush();
            tail.extend_from_slice(&buf[..n]);
            if tail.len() > 64 << 10 {
                tail.drain(..tail.len() - (16 << 10));
            }
        }
        let status = child.wait().context("waiting for QEMU")?;
        drop(tpm);
        let ending = classify(&String::from_utf8_lossy(&tail), Some(status));
        if ending != Ending::Rebooted {
            // Off until the next run: the next power-on is a cold boot.
            twin.power_cut()?;
        }
        match ending {
            Ending::Rebooted => eprintln!("\nthe twin rebooted: powering it on again"),
            Ending::PoweredOff => {
                eprintln!(
                    "\nthe twin powered off; its state stays in {}",
                    twin.dir().display()
                );
                return Ok(());
            }
            Ending::Stopped => {
                eprintln!(
                    "\nQEMU ended with {status}; the twin's state stays in {}",
                    twin.dir().display()
                );
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn endings_are_read_from_the_console_and_exit_status() {
        let ok = Some(ExitStatus::from_raw(0));
        assert_eq!(
            classify("...\n[  9.1] reboot: Restarting system\n", ok),
            Ending::Rebooted
        );
        assert_eq!(
            classify("[ 3.2] reboot: Power down\n", ok),
            Ending::PoweredOff
        );
        assert_eq!(classify("reboot: System halted", ok), Ending::PoweredOff);
        assert_eq!(
            classify("Kernel panic - not syncing\nRebooting in 10 seconds..", ok),
            Ending::Rebooted
        );
        // A power-off of an earlier boot in the same text does not count after a reboot.
        assert_eq!(
            classify("reboot: Power down\n...\nreboot: Restarting system", ok),
            Ending::Rebooted
        );
        assert_eq!(classify("firmware reset", ok), Ending::Rebooted);
        assert_eq!(
            classify("reboot: Power down", Some(ExitStatus::from_raw(1 << 8))),
            Ending::Stopped
        );
        assert_eq!(
            classify("", Some(ExitStatus::from_raw(2))),
            Ending::Stopped,
            "killed by SIGINT"
        );
        assert_eq!(classify("", None), Ending::Stopped);
    }
}
