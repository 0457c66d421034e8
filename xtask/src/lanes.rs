//! The VM tier's CI suites side by side.
//!
//! A guest under TCG keeps one core busy and the suites boot one guest at a time, so on a
//! two-core machine one suite at a time leaves a core to the background fuzz build and
//! little else. Run in lanes, the suites share the cores and the tier takes about the time
//! of its longest lane.
//!
//! The VM suites cannot be split evenly (in CI one lane ran 14:03 and the other 11:22), so
//! after them the lanes take the short host suites of tier 2 that need no network
//! ([`crate::test`] names them) and then tier 4's fuzz smoke run, on the core the first lane
//! to finish leaves idle: about two minutes of CI that ran one after another before.
//!
//! Each suite runs in its own network namespace (`unshare --net`, loopback up): the suites'
//! host-side servers use fixed ports (the ports the test images' firewall lets the guests
//! reach through QEMU's user-mode gateway, 10.0.2.2), and a namespace gives every suite its
//! own 127.0.0.1, so two suites serving the same port cannot meet. A namespace has no route
//! out, so the images the suites boot are built first, in the host's namespace
//! (`tests/examples/vm_prebuild.rs`); a suite's own builds are then reuses, and builds that
//! share a cache take turns on its lock (`aperture_image::pipeline`).
//!
//! A suite's output goes to `target/aperture-tests/lanes/<suite>.log` and is printed whole
//! when it ends, so the output of two suites is never interleaved.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use aperture_sys::Cmd;

use crate::test::{failed, Row};

/// What the lanes need from the test command.
pub(crate) struct Ctx<'a> {
    pub(crate) root: &'a Path,
    pub(crate) lanes: usize,
    pub(crate) keep_going: bool,
    pub(crate) full: bool,
    /// The command that runs one suite.
    pub(crate) command: &'a (dyn Fn(&str) -> Cmd + Sync),
    /// Builds the suites' images before they start.
    pub(crate) prebuild: &'a (dyn Fn() -> Result<()> + Sync),
}

/// What the lanes did.
pub(crate) struct Outcome {
    pub(crate) rows: Vec<Row>,
    pub(crate) failed: Vec<String>,
}

/// The suites the lanes take first: the longest (as measured in CI) first, so that the lanes
/// end close together. Other VM suites come after these, by name, then the host jobs
/// ([`HOST_LONGEST_FIRST`], then the others by name).
const LONGEST_FIRST: [&str; 4] = ["vm_runtime", "vm_update", "vm_storage", "vm_boot"];

/// The jobs after the VM suites that the lanes take first, the longest (in CI) first, so that
/// the run ends on a short one: in a CI dry run the fuzz run (1:36 on one core) taken last
/// made its lane end 1:20 after the other.
const HOST_LONGEST_FIRST: [&str; 2] = ["audit", FUZZ_JOB];

/// The name of tier 4's fuzz smoke run among the lanes' jobs.
pub(crate) const FUZZ_JOB: &str = "fuzz";

/// The tier of a lane's job: VM suites are tier 3, the fuzz run tier 4, host suites tier 2.
fn tier(job: &str) -> u8 {
    if job == FUZZ_JOB {
        4
    } else if job.starts_with("vm") {
        3
    } else {
        2
    }
}

/// Brings up the namespace's loopback, then runs the wrapped command.
const LOOPBACK_UP: &str = "ip link set lo up && exec \"$@\"";

/// `cmd` in a new network namespace of its own.
pub(crate) fn in_own_network(cmd: Cmd) -> Cmd {
    cmd.wrapped("unshare", ["--net", "--", "sh", "-c", LOOPBACK_UP, "sh"])
}

/// How many lanes to run: `wanted`, or 1 when network namespaces cannot be made here (then
/// says why).
pub(crate) fn available(wanted: usize) -> usize {
    if wanted <= 1 {
        return 1;
    }
    match in_own_network(Cmd::new("true")).run() {
        Ok(_) => wanted,
        Err(e) => {
            eprintln!(
                "xtask test: the VM suites run one at a time: a network namespace of their own \
                 could not be made ({e})"
            );
            1
        }
    }
}

/// The guests' CPUs in `lanes` side-by-side lanes: the host's cores shared out, at least one
/// (`APERTURE_VM_CPUS`, read by the tests crate's `boot`), unless already set. Under TCG a
/// virtual CPU is a host thread, and two two-CPU guests on two cores waste time spinning on
/// each other's preempted CPUs.
fn guest_cpus(cmd: Cmd, lanes: usize) -> Cmd {
    if lanes <= 1 || std::env::var_os(CPUS_ENV).is_some() {
        return cmd;
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    cmd.env(CPUS_ENV, (cores / lanes).max(1).to_string())
}

/// The tests crate's variable for the guests' CPU count.
const CPUS_ENV: &str = "APERTURE_VM_CPUS";

/// The order the lanes take `suites` in.
fn order(suites: &[String]) -> Vec<String> {
    let mut v = suites.to_vec();
    v.sort_by_key(|n| {
        let longest: &[&str] = if tier(n) == 3 {
            &LONGEST_FIRST
        } else {
            &HOST_LONGEST_FIRST
        };
        (
            tier(n) != 3,
            longest.iter().position(|l| l == n).unwrap_or(longest.len()),
            n.clone(),
        )
    });
    v
}

fn mmss(d: Duration) -> String {
    format!("{}:{:02}", d.as_secs() / 60, d.as_secs() % 60)
}

/// Build the images, then run `suites` in `ctx.lanes` lanes: the VM suites, then any host
/// suites and the fuzz run ([`FUZZ_JOB`]) among them. Without `keep_going`, a failure lets
/// the suites already running finish and starts no other.
pub(crate) fn run(ctx: &Ctx<'_>, suites: &[String]) -> Outcome {
    let mut rows = Vec::new();
    let t = Instant::now();
    if let Err(e) = (ctx.prebuild)() {
        eprintln!("xtask test: the VM suites' images could not be built: {e:#}");
        rows.push(failed(3, "VM suites' images", t.elapsed()));
        return Outcome {
            rows,
            failed: vec!["the VM suites' images".into()],
        };
    }
    rows.push(Row {
        tier: 3,
        suite: "VM suites' images, built first".into(),
        outcome: "built".into(),
        took: Some(t.elapsed()),
    });

    let logs = ctx.root.join("target/aperture-tests/lanes");
    let _ = std::fs::create_dir_all(&logs);
    let queue = Mutex::new(order(suites).into_iter());
    let stop = AtomicBool::new(false);
    let printing = Mutex::new(());
    let done: Mutex<Vec<(String, usize, Duration, bool)>> = Mutex::new(Vec::new());
    let wall = Instant::now();
    std::thread::scope(|scope| {
        for lane in 1..=ctx.lanes {
            let (queue, stop, printing, done, logs) = (&queue, &stop, &printing, &done, &logs);
            scope.spawn(move || loop {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Some(name) = queue.lock().unwrap_or_else(|e| e.into_inner()).next() else {
                    break;
                };
                let log = logs.join(format!("{name}.log"));
                {
                    let _p = printing.lock().unwrap_or_else(|e| e.into_inner());
                    eprintln!(
                        "xtask test: lane {lane}: {name} started in a network namespace of its \
                         own; its output is printed when it ends (meanwhile: {})",
                        log.display()
                    );
                }
                let t = Instant::now();
                let result = match std::fs::File::create(&log) {
                    Ok(mut file) => in_own_network(guest_cpus((ctx.command)(&name), ctx.lanes))
                        .stream(|line| {
                            let _ = writeln!(file, "{line}");
                        })
                        .map_err(anyhow::Error::from),
                    Err(e) => {
                        Err(anyhow::Error::from(e).context(format!("creating {}", log.display())))
                    }
                };
                let took = t.elapsed();
                let ok = result.is_ok();
                {
                    let _p = printing.lock().unwrap_or_else(|e| e.into_inner());
                    eprintln!(
                        "\n==== {name} (lane {lane}) {} after {}; its output: ====",
                        if ok { "passed" } else { "FAILED" },
                        mmss(took)
                    );
                    eprint!("{}", std::fs::read_to_string(&log).unwrap_or_default());
                    if let Err(e) = &result {
                        eprintln!("xtask test: {name}: {e:#}");
                    }
                    eprintln!("==== end of {name}'s output ====\n");
                }
                done.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((name, lane, took, ok));
                if !ok && !ctx.keep_going {
                    stop.store(true, Ordering::SeqCst);
                }
            });
        }
    });
    let wall = wall.elapsed();
    let done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut failed_suites = Vec::new();
    let others = suites.iter().filter(|s| tier(s) != 3).count();
    rows.push(Row {
        tier: 3,
        suite: format!(
            "VM suites{}, {} side by side (wall time)",
            if others > 0 { " then host jobs" } else { "" },
            ctx.lanes
        ),
        outcome: if done.iter().all(|d| d.3) && done.len() == suites.len() {
            "passed".into()
        } else {
            "FAILED".into()
        },
        took: Some(wall),
    });
    for name in suites {
        match done.iter().find(|d| &d.0 == name) {
            Some((_, lane, took, ok)) => {
                if !ok {
                    failed_suites.push(name.clone());
                }
                rows.push(Row {
                    tier: tier(name),
                    suite: format!("  {name}"),
                    outcome: format!(
                        "{} in {} (lane {lane})",
                        if !ok {
                            "FAILED".into()
                        } else if tier(name) == 4 {
                            "passed".into()
                        } else {
                            crate::test::passed(ctx.full)
                        },
                        mmss(*took)
                    ),
                    took: None,
                });
            }
            None => rows.push(Row {
                tier: tier(name),
                suite: format!("  {name}"),
                outcome: "NOT RUN: a suite before it failed".into(),
                took: None,
            }),
        }
    }
    Outcome {
        rows,
        failed: failed_suites,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_suites_go_first_and_new_ones_after_them() {
        let got = order(&[
            "vm_boot".to_string(),
            "vm_new".to_string(),
            "vm_runtime".to_string(),
            "vm_storage".to_string(),
            "vm_update".to_string(),
        ]);
        assert_eq!(
            got,
            ["vm_runtime", "vm_update", "vm_storage", "vm_boot", "vm_new"]
        );
    }

    #[test]
    fn host_jobs_come_after_the_vm_suites_the_longest_first() {
        let got = order(&[
            FUZZ_JOB.to_string(),
            "storage".to_string(),
            "vm_boot".to_string(),
            "flash".to_string(),
            "audit".to_string(),
            "vm_runtime".to_string(),
        ]);
        assert_eq!(
            got,
            [
                "vm_runtime",
                "vm_boot",
                "audit",
                FUZZ_JOB,
                "flash",
                "storage"
            ]
        );
        assert_eq!([tier("vm_boot"), tier("flash"), tier(FUZZ_JOB)], [3, 2, 4]);
    }

    #[test]
    fn a_suite_in_its_own_namespace_has_its_own_loopback_with_nothing_listening() {
        if !crate::preflight::is_root() {
            eprintln!("SKIPPED: network namespaces need root");
            return;
        }
        if available(2) != 2 {
            panic!("no network namespace here although root");
        }
        // This process listens on the host's loopback; the namespace has a loopback of its
        // own, up, on which nothing listens.
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let host = Cmd::new("ss").args(["-Hltn"]).text().unwrap();
        assert!(host.contains(&format!("127.0.0.1:{port}")), "{host}");
        let inside = in_own_network(
            Cmd::new("sh").args(["-c", "ip -o link show lo; echo LISTENING; ss -Hltn"]),
        )
        .text()
        .unwrap();
        let (link, listening) = inside.split_once("LISTENING").unwrap();
        assert!(link.contains("UP"), "{inside}");
        assert!(listening.trim().is_empty(), "{inside}");
    }
}
