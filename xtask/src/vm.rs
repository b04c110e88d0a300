//! Virtual machines: the one QEMU harness ([`qemu`]) with its QMP client, the tests that boot
//! and install the image on it, and `cargo xtask vm`, which boots it for a person to look at.

pub mod boot_test;
pub mod first_boot_test;
pub mod gui_test;
pub mod hardware_test;
pub mod install_test;
pub mod look;
pub mod qemu;
pub mod qmp;
