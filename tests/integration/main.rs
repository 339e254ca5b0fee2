//! The integration tests: one test binary (ripgrep's layout), one module per area, all
//! driving the real binary (`GLANCE_VHD_BIN`, the static build under `make test`) and
//! the real peers. `helpers` holds everything the modules share: where the binary, the
//! samples and the peers are (every environment variable the tests read), scratch SRs,
//! tarballs, the test Glance.
//!
//! Run one area with a filter: `cargo test --test integration -- faults::`.

mod helpers;

mod architecture;
mod bomb;
mod chains;
mod cli;
mod corrupt;
mod cron;
mod download;
mod drift;
mod faults;
mod flatten;
mod fuzz_fixtures;
mod glance_v2;
mod hardening;
mod hygiene;
mod isal;
mod keystone;
mod levels;
mod link_errors;
mod openstack_stack;
mod peers;
mod plugin;
mod plugin_kernel_fsync;
mod plugin_memory;
mod plugin_seed;
mod relink_io;
mod resume;
mod samples;
mod store_v1;
mod upload;
mod vhd_repair;
mod vhd_util_forms;
mod xapi_scan;
