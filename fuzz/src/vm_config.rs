//! The configuration a user hands `vmm`: `vmm::VmConfig` from JSON (`serde_json::from_slice`,
//! as `--config` reads it) and `validate()`, and `vmm::DiskConfig::parse` (`--disk`) on the
//! same bytes as text.
//!
//! Checks: a valid config survives a JSON round trip and its memory size in bytes does not
//! overflow; a parsed `--disk` has a path and survives the round trip through its CLI form
//! when that form can express it.

use vmm::config::disk_id;
use vmm::{DiskConfig, VmConfig};

/// Parses `data` both ways.
pub fn run(data: &[u8]) {
    if let Ok(config) = serde_json::from_slice::<VmConfig>(data) {
        if config.validate().is_ok() {
            let bytes = config.memory_bytes();
            assert_eq!(bytes, config.memory_mib << 20);
            for (index, disk) in config.disks.iter().enumerate() {
                assert!(!disk_id(disk, index).is_empty());
            }
        } else {
            let _ = config.validate().map_err(|err| err.to_string());
        }
        let json = serde_json::to_vec(&config).unwrap();
        let again: VmConfig = serde_json::from_slice(&json).unwrap();
        assert_eq!(again, config);
    }

    let text = String::from_utf8_lossy(data);
    match DiskConfig::parse(&text) {
        Ok(disk) => {
            assert!(!disk.path.as_os_str().is_empty());
            let path = disk.path.to_str().unwrap();
            if !path.contains(',') && disk.id.as_deref().is_none_or(|id| !id.contains(',')) {
                let mut cli = format!("path={path},readonly={}", disk.readonly);
                if let Some(id) = &disk.id {
                    cli.push_str(&format!(",id={id}"));
                }
                assert_eq!(DiskConfig::parse(&cli).unwrap(), disk, "{cli}");
            }
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
}
