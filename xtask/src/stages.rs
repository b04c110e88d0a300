//! The stages of `cargo xtask iso`, in the order `iso::run` calls them. Each takes a small typed
//! input and returns what the next stage needs; none of them knows about the command line.
//!
//! render -> package lock (+ package store) -> apt sources -> build root (+ package check) -> kernel
//! -> installer build -> payload debs -> lb build (with its chroot cache, through the apt proxy)
//! -> sbom -> publish (checksums, signatures)

pub mod apt_proxy;
pub mod apt_sources;
pub mod build_root;
pub mod checksums;
pub mod chroot_cache;
pub mod fetch;
pub mod installer_build;
pub mod kernel;
pub mod lb_build;
pub mod package_store;
pub mod payload_debs;
pub mod publish;
pub mod render;
pub mod sandbox;
pub mod sbom;
pub mod signing;
