//! glance-vhd: move VM disk images (VHD chains) between a XenServer / XCP-ng file SR and
//! OpenStack Glance, and the native VHD tools that make it possible without `vhd-util`.
//!
//! `../shared/DESIGN.md` is the contract. Modules are named after what they are:
//! [`vhd`] is the native VHD engine; [`cli`] the admin command line; [`error`] the small
//! error kind every module error maps to.

pub mod bundle;
pub mod cli;
pub mod error;
pub mod fsutil;
pub mod log;
pub mod progress;
pub mod retry;
pub mod sr;
pub mod store;
pub mod stream;
pub mod testhooks;
pub mod transfer;
pub mod vhd;
pub mod xapi;
