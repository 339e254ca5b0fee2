//! glance-vhd: move VM disk images (VHD chains) between a XenServer / XCP-ng file SR and
//! OpenStack Glance, and the native VHD tools that make it possible without `vhd-util`.
//!
//! `../shared/DESIGN.md` is the contract; `ARCHITECTURE.md` the map. Modules are named
//! after what they are, in layers (each uses only those below it):
//!
//! * front ends: [`cli`] (the admin command line) and [`xapi`] (the plugin protocol);
//! * [`transfer`]: the download and upload engines both share;
//! * [`bundle`] (the tarball), [`store`] (Glance and the local store), [`sr`] (the storage
//!   repository), [`xenapi`] (XML-RPC and the XenAPI client): none of them knows the
//!   others;
//! * [`vhd`] (the native VHD engine), [`progress`] and [`signals`] (SIGTERM/SIGINT
//!   clean-up);
//! * [`log`], [`stream`] (`std::io` adaptors), [`retry`];
//! * [`error`] (the small error kind every module error maps to), [`testhooks`],
//!   [`fsutil`].

pub mod bundle;
pub mod cli;
pub mod error;
pub mod fsutil;
pub mod log;
pub mod progress;
pub mod retry;
pub mod signals;
pub mod sr;
pub mod store;
pub mod stream;
pub mod testhooks;
pub mod transfer;
pub mod vhd;
pub mod xapi;
pub mod xenapi;
