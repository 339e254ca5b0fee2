//! Everything a person or a script wants to know about a VHD (`glance-vhd vhd info`),
//! as one serialisable struct: the `--json` schema is this struct.

use std::path::Path;

use serde::Serialize;

use super::chain::Chain;
use super::footer::{Geometry, VHD_EPOCH};
use super::header::code;
use super::locator::{find_parent, read_slot};
use super::{fmt_uuid, OpenMode, Result, Vhd};

#[derive(Debug, Serialize)]
pub struct Info {
    pub path: String,
    pub disk_type: &'static str,
    pub uuid: String,
    pub virtual_size: u64,
    pub original_size: u64,
    pub file_size: u64,
    /// End of data + footer: what `vhd-util query -s` prints.
    pub physical_size: u64,
    pub created: Timestamp,
    pub creator: Creator,
    pub geometry: Geometry,
    pub hidden: u8,
    pub saved_state: u8,
    pub features: u32,
    /// `primary`, or `backup` when the primary footer is damaged and the copy at 0 is used.
    pub footer_in_use: &'static str,
    pub dynamic: Option<Dynamic>,
    pub parent: Option<Parent>,
    /// Leaf first. Empty for a disk without parent; a broken chain gives `chain_error`.
    pub chain: Vec<ChainEntry>,
    pub chain_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Timestamp {
    /// Seconds since 2000-01-01 00:00:00 UTC, as stored.
    pub vhd_epoch: u32,
    /// RFC 3339, UTC.
    pub utc: String,
}

impl Timestamp {
    pub fn from_vhd(t: u32) -> Timestamp {
        Timestamp {
            vhd_epoch: t,
            utc: rfc3339(t as i64 + VHD_EPOCH),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Creator {
    pub application: String,
    pub version: String,
    pub host_os: String,
}

#[derive(Debug, Serialize)]
pub struct Dynamic {
    pub header_offset: u64,
    pub table_offset: u64,
    pub block_size: u32,
    pub max_table_entries: u32,
    pub allocated_blocks: usize,
    pub batmap: Option<BatmapInfo>,
}

#[derive(Debug, Serialize)]
pub struct BatmapInfo {
    pub offset: u64,
    pub sectors: u32,
    pub version: String,
    pub full_blocks: Vec<usize>,
}

#[derive(Debug, Serialize)]
pub struct Parent {
    pub uuid: String,
    pub timestamp: Timestamp,
    pub name: String,
    pub locators: Vec<LocatorInfo>,
    /// Where the locators lead, if anywhere.
    pub resolved: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct LocatorInfo {
    pub slot: usize,
    pub code: String,
    pub data_offset: u64,
    pub data_space: u32,
    pub data_length: u32,
    pub path: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ChainEntry {
    pub path: String,
    pub uuid: Option<String>,
    pub disk_type: &'static str,
    pub virtual_size: u64,
}

pub fn info(path: &Path) -> Result<Info> {
    let vhd = Vhd::open(path, OpenMode::READ)?;
    let f = &vhd.footer;
    let dynamic = vhd.header().map(|h| Dynamic {
        header_offset: f.data_offset,
        table_offset: h.table_offset,
        block_size: h.block_size,
        max_table_entries: h.max_bat,
        allocated_blocks: vhd.allocated_blocks(),
        batmap: vhd.batmap.as_ref().map(|b| BatmapInfo {
            offset: b.offset,
            sectors: b.size,
            version: version_string(b.version),
            full_blocks: (0..vhd.used_bat_entries())
                .filter(|&i| b.is_full(i))
                .collect(),
        }),
    });
    let parent = match vhd.header() {
        Some(h) if vhd.is_differencing() => {
            let mut locators = Vec::new();
            for (slot, l) in h.locators.iter().enumerate() {
                if l.code == code::NONE {
                    continue;
                }
                locators.push(LocatorInfo {
                    slot,
                    code: code::name(l.code),
                    data_offset: l.data_offset,
                    data_space: l.data_space,
                    data_length: l.data_len,
                    path: read_slot(&vhd, l)?,
                });
            }
            Some(Parent {
                uuid: fmt_uuid(&h.parent_uuid),
                timestamp: Timestamp::from_vhd(h.parent_timestamp),
                name: h.parent_name_lossy(),
                locators,
                resolved: find_parent(&vhd).ok().map(|(p, _)| p.display().to_string()),
            })
        }
        _ => None,
    };
    let (chain, chain_error) = if vhd.is_differencing() {
        match Chain::open(path) {
            Ok(c) => (
                c.layers
                    .iter()
                    .map(|l| ChainEntry {
                        path: l.path().display().to_string(),
                        uuid: match l {
                            super::chain::Layer::Vhd(v) => Some(v.uuid().to_string()),
                            super::chain::Layer::Raw { .. } => None,
                        },
                        disk_type: match l {
                            super::chain::Layer::Vhd(v) => v.disk_type().name(),
                            super::chain::Layer::Raw { .. } => "raw",
                        },
                        virtual_size: l.virtual_size(),
                    })
                    .collect(),
                None,
            ),
            Err(e) => (Vec::new(), Some(e.to_string())),
        }
    } else {
        (Vec::new(), None)
    };
    Ok(Info {
        path: path.display().to_string(),
        disk_type: vhd.disk_type().name(),
        uuid: vhd.uuid().to_string(),
        virtual_size: f.curr_size,
        original_size: f.orig_size,
        file_size: vhd.file_size,
        // end_of_data saturates at u64::MAX for a hostile locator/batmap offset (fuzz:
        // tests/fixtures/fuzz/vhd_open-physical-size-overflow.bin): saturate here too.
        physical_size: vhd.end_of_data().saturating_add(512),
        created: Timestamp::from_vhd(f.timestamp),
        creator: Creator {
            application: String::from_utf8_lossy(&f.creator_app)
                .trim_end_matches('\0')
                .to_string(),
            version: version_string(f.creator_version),
            host_os: host_os(f.creator_os),
        },
        geometry: f.geometry,
        hidden: f.hidden,
        saved_state: f.saved,
        features: f.features,
        footer_in_use: if vhd.backup_used { "backup" } else { "primary" },
        dynamic,
        parent,
        chain,
        chain_error,
    })
}

fn version_string(v: u32) -> String {
    format!("{}.{}", v >> 16, v & 0xffff)
}

fn host_os(v: u32) -> String {
    match v {
        0 => "none".into(),
        _ => code::name(v),
    }
}

/// Unix seconds → `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC).
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A human summary (the text form of `vhd info`).
pub fn render(i: &Info) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "file:            {}", i.path);
    let _ = writeln!(s, "type:            {}", i.disk_type);
    let _ = writeln!(s, "uuid:            {}", i.uuid);
    let _ = writeln!(
        s,
        "virtual size:    {} bytes ({} MiB)",
        i.virtual_size,
        i.virtual_size >> 20
    );
    let _ = writeln!(
        s,
        "file size:       {} bytes (data ends at {})",
        i.file_size, i.physical_size
    );
    let _ = writeln!(s, "created:         {}", i.created.utc);
    let _ = writeln!(
        s,
        "creator:         {:?} {} on {}",
        i.creator.application, i.creator.version, i.creator.host_os
    );
    let _ = writeln!(
        s,
        "geometry:        {}/{}/{}",
        i.geometry.cylinders, i.geometry.heads, i.geometry.sectors
    );
    let _ = writeln!(s, "hidden:          {}", i.hidden);
    if i.footer_in_use == "backup" {
        let _ = writeln!(
            s,
            "footer:          primary damaged, using the copy at offset 0"
        );
    }
    if let Some(d) = &i.dynamic {
        let _ = writeln!(
            s,
            "blocks:          {} of {} allocated, {} bytes each (BAT at {})",
            d.allocated_blocks, d.max_table_entries, d.block_size, d.table_offset
        );
        if let Some(b) = &d.batmap {
            let _ = writeln!(
                s,
                "batmap:          v{} at {}, full blocks {:?}",
                b.version, b.offset, b.full_blocks
            );
        }
    }
    if let Some(p) = &i.parent {
        let _ = writeln!(s, "parent uuid:     {}", p.uuid);
        let _ = writeln!(s, "parent name:     {}", p.name);
        let _ = writeln!(s, "parent time:     {}", p.timestamp.utc);
        for l in &p.locators {
            let _ = writeln!(
                s,
                "locator {}:       {} at {} ({} of {} bytes) {}",
                l.slot,
                l.code,
                l.data_offset,
                l.data_length,
                l.data_space,
                l.path.as_deref().unwrap_or("<undecodable>")
            );
        }
        let _ = writeln!(
            s,
            "parent path:     {}",
            p.resolved.as_deref().unwrap_or("<not found>")
        );
    }
    if !i.chain.is_empty() {
        let _ = writeln!(s, "chain (leaf first):");
        for c in &i.chain {
            let _ = writeln!(
                s,
                "  {} {} {}",
                c.uuid.as_deref().unwrap_or("(raw)"),
                c.disk_type,
                c.path
            );
        }
    }
    if let Some(e) = &i.chain_error {
        let _ = writeln!(s, "chain:           broken: {e}");
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(super::rfc3339(946_684_800), "2000-01-01T00:00:00Z");
        assert_eq!(
            super::rfc3339(946_684_800 + 757_479_845),
            "2024-01-02T03:04:05Z"
        );
    }
}
