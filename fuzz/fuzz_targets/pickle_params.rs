//! Fuzz the `params` pickle decoder and the argument screening that follows it.
//!
//! The input is the pickle. `pickle::decode` must refuse anything but plain data with
//! an error (never a panic, a deep recursion or an allocation beyond its budget); a
//! decoded value then goes through what each pickle-taking glance call does with it
//! (`Call::check_params` of every call in the glance table that has one: its parser,
//! the `args`/`kwargs` binding, the typed keyword screening of hosts, ports, headers,
//! paths, UUID lists and properties), stopping before anything would run. The reply encoder is fuzzed on the decoded strings too.

#![no_main]

use glance_vhd::xapi::calls::table;
use glance_vhd::xapi::pickle::decode;
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = decode(data) else { return };
    let glance = table("glance").expect("the glance plugin");
    for check in glance.iter().filter_map(|c| c.check_params) {
        let _ = check(&v);
    }
    // What we encode must decode to the same strings.
    common::assert_reply_round_trips(&v);
});
