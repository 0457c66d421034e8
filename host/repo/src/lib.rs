//! The fleet's release repository on the build host. Releases are published as a TUF
//! repository (spec 1.0, consistent snapshots) that any web server, object store or CDN can
//! serve as static files: each release's update bundle is a target whose signed custom metadata
//! ([`aperture_release::ReleaseMeta`]) tells appliances what it is and when they may take it.
//! tough (awslabs) signs and checks the metadata; Aperture does not implement TUF itself.
//!
//! * [`config`]: `repo.toml`, each role's keys, threshold and validity.
//! * [`keys`]: Ed25519 keys, development keys made loudly and refused for a release.
//! * [`repo`]: [`Repo`]: init, publish, halt and resume, refresh, status.
//! * [`rollouts`]: the fleet server's delegated role, which records each rollout's state
//!   with an online key and can only hold releases back.
//! * [`rotate`]: `repo rotate-root`, a new root with new keys, signed by the old and the new.
//! * [`sync`]: copy a repository to where it is served, targets first and the timestamp last.
//! * [`s3`]: the same, into an S3 bucket.

pub mod config;
pub mod keys;
pub mod repo;
pub mod rollouts;
pub mod rotate;
pub mod s3;
pub mod sync;

pub use config::{RepoConfig, Role};
pub use repo::{Published, Repo, RepoLock, Status};
