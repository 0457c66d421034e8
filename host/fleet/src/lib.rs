//! `aperture-fleet`: the fleet server and its admin command line.
//!
//! * [`pki`]: the fleet CA, the server's certificate, device certificates from CSRs.
//! * [`token`]: enrollment and API tokens (random, stored hashed) and API roles.
//! * [`db`]: the database (SQLite or PostgreSQL, one schema): devices, reports, tokens, audit,
//!   rollouts and each device's outcome in them.
//! * [`rollout`]: rollouts' pure rules: a report's outcome, the failure policy, start checks.
//! * [`signer`]: the repository's signed rollout records made to follow the database.
//! * [`server`]: HTTPS (TLS 1.3, mutual TLS for devices) and the routes.
//! * [`api`]: the JSON types of the HTTP API and their bounds.
//! * [`client`]: the admin API's client (what the command line uses).
//! * [`cli`]: the `aperture-fleet` command line.

pub mod api;
pub mod cli;
pub mod client;
pub mod db;
pub mod pki;
pub mod rollout;
pub mod server;
pub mod signer;
pub mod token;
