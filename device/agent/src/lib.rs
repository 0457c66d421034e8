//! `aperture-agent`: what runs on the appliance to report its state. It starts with `status`
//! (product, version, board, the booted slot and how the root is mounted) and grows into the
//! health gate and the fleet client.

pub mod host;
pub mod status;
