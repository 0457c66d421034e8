//! Flashing several targets at once: one thread per target, each with its own decoder, so
//! one slow or failing device neither holds up nor fails the others. Every target's result
//! is reported on its own.

use std::time::{Duration, Instant};

use crate::error::{FlashError, Result};
use crate::image::VerifiedImage;
use crate::target::Target;
use crate::writer::{flash, FlashReport, Progress};

/// One target to flash, with where its progress goes.
pub struct Job {
    /// The target.
    pub target: Box<dyn Target>,
    /// Its progress display.
    pub progress: Box<dyn Progress>,
}

/// How one target ended.
#[derive(Debug)]
pub struct Outcome {
    /// The target's name.
    pub target: String,
    /// Its report, or why it failed.
    pub result: Result<FlashReport>,
    /// Wall time for this target.
    pub elapsed: Duration,
}

impl Outcome {
    /// Whether the target was written and verified.
    pub fn ok(&self) -> bool {
        self.result.is_ok()
    }
}

/// Flashes `image` to every job's target in parallel and returns one outcome per job, in
/// the order given.
pub fn flash_all(image: &VerifiedImage, jobs: Vec<Job>) -> Vec<Outcome> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                let name = job.target.name().to_string();
                let handle = scope.spawn(move || {
                    let started = Instant::now();
                    let result = flash(image, job.target.as_ref(), job.progress.as_ref());
                    (result, started.elapsed())
                });
                (name, handle)
            })
            .collect();
        handles
            .into_iter()
            .map(|(target, handle)| {
                let (result, elapsed) = handle.join().unwrap_or_else(|_| {
                    (
                        Err(FlashError::Failed {
                            target: target.clone(),
                            error: Box::new(FlashError::Stopped(
                                "the writer thread panicked".into(),
                            )),
                            wipe_error: Some(
                                "not attempted after the panic; wipe it by hand".into(),
                            ),
                        }),
                        Duration::ZERO,
                    )
                });
                Outcome {
                    target,
                    result,
                    elapsed,
                }
            })
            .collect()
    })
}
