//! The network and host-channel parts of the configuration: `--net` (virtio-net on a tap) and
//! `--vsock` (virtio-vsock with a hybrid Unix-socket backend).

use std::collections::HashSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Invalid `--net` or `--vsock` settings.
#[derive(Debug, thiserror::Error)]
pub enum NetConfigError {
    /// A `--net` or `--vsock` option that cannot be parsed.
    #[error("Invalid --{flag} {text:?}: {reason}")]
    Option {
        /// `net` or `vsock`.
        flag: &'static str,
        /// The option as given.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A tap name Linux would refuse.
    #[error(
        "Invalid tap name {0:?}: must be 1 to 15 bytes, without '/', ':', spaces or control characters"
    )]
    TapName(String),
    /// A MAC address that cannot be parsed or is not a unicast address.
    #[error(
        "Invalid MAC address {0:?}: must be six hex bytes (52:54:00:12:34:56), unicast, not zero"
    )]
    Mac(String),
    /// `ip` without `mask` or the other way round.
    #[error("Tap {tap}: ip and mask go together")]
    IpWithoutMask {
        /// The tap.
        tap: String,
    },
    /// A netmask whose ones are not contiguous.
    #[error("Tap {tap}: invalid netmask {mask}")]
    Mask {
        /// The tap.
        tap: String,
        /// The mask.
        mask: Ipv4Addr,
    },
    /// Two network devices on one tap.
    #[error("Duplicate tap {0:?}")]
    DuplicateTap(String),
    /// Two network devices with one MAC address.
    #[error("Duplicate MAC address {0}")]
    DuplicateMac(MacAddress),
    /// A context id that is reserved or too large.
    #[error(
        "Invalid vsock CID {0}: 0, 1 and 2 are reserved (hypervisor, local, host), the largest is 4294967294"
    )]
    Cid(u64),
    /// A vsock socket path that is empty or too long for a Unix socket.
    #[error("Invalid vsock socket path {0:?}: must be 1 to 100 bytes")]
    SocketPath(PathBuf),
}

/// An Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MacAddress(pub [u8; 6]);

impl MacAddress {
    /// Whether a NIC may have it: not multicast (bit 0 of the first byte), not all zero.
    pub fn is_nic_address(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }

    /// A stable, locally administered unicast address for the tap `name`: the same tap gets
    /// the same address on every run, so the guest's view (and its DHCP leases, ARP caches)
    /// does not change between runs.
    pub fn for_tap(name: &str) -> Self {
        // FNV-1a: stable across Rust versions, unlike `DefaultHasher`.
        let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
        let bytes = hash.to_be_bytes();
        // 0x02: locally administered, unicast.
        Self([0x02, bytes[0], bytes[1], bytes[2], bytes[3], bytes[4]])
    }
}

impl FromStr for MacAddress {
    type Err = NetConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || NetConfigError::Mac(text.to_owned());
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(invalid)?;
            if part.len() != 2 {
                return Err(invalid());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
        }
        if parts.next().is_some() || !MacAddress(bytes).is_nic_address() {
            return Err(invalid());
        }
        Ok(Self(bytes))
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl Serialize for MacAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A virtio-net device on a host tap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The tap: opened if it exists, created otherwise (CAP_NET_ADMIN).
    pub tap: String,
    /// The host side's IPv4 address on the tap; with `mask`, vmm configures it and brings the
    /// tap up.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    /// The netmask that goes with `ip`.
    #[serde(default)]
    pub mask: Option<Ipv4Addr>,
    /// The guest's MAC address; [`MacAddress::for_tap`] when unset.
    #[serde(default)]
    pub mac: Option<MacAddress>,
}

impl NetConfig {
    /// A device on `tap`, with no host address and the tap's default MAC.
    pub fn new(tap: impl Into<String>) -> Self {
        Self {
            tap: tap.into(),
            ip: None,
            mask: None,
            mac: None,
        }
    }

    /// Parses the CLI form `tap=NAME[,ip=A.B.C.D,mask=A.B.C.D][,mac=MAC]`.
    pub fn parse(text: &str) -> Result<Self, NetConfigError> {
        let invalid = |reason: String| NetConfigError::Option {
            flag: "net",
            text: text.to_owned(),
            reason,
        };
        let mut net = Self::new("");
        for (key, value) in key_values(text).map_err(invalid)? {
            let address = || {
                value
                    .parse::<Ipv4Addr>()
                    .map_err(|_| invalid(format!("{key}={value} is not an IPv4 address")))
            };
            match key {
                "tap" => net.tap = value.to_owned(),
                "ip" => net.ip = Some(address()?),
                "mask" => net.mask = Some(address()?),
                "mac" => net.mac = Some(value.parse()?),
                _ => return Err(invalid(format!("unknown key {key:?}"))),
            }
        }
        if net.tap.is_empty() {
            return Err(invalid("no tap=NAME".to_owned()));
        }
        Ok(net)
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> MacAddress {
        self.mac.unwrap_or_else(|| MacAddress::for_tap(&self.tap))
    }

    /// The host address and mask to configure, if any.
    pub fn host_address(&self) -> Option<(Ipv4Addr, Ipv4Addr)> {
        self.ip.zip(self.mask)
    }
}

/// A virtio-vsock device whose host side is a Unix socket (Firecracker's hybrid vsock).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub cid: u64,
    /// The Unix socket host programs connect to (then send `CONNECT <port>\n`); guest
    /// connections to the host's port P go to `<socket>_P`.
    pub socket: PathBuf,
}

impl VsockConfig {
    /// Parses the CLI form `cid=N,socket=PATH`.
    pub fn parse(text: &str) -> Result<Self, NetConfigError> {
        let invalid = |reason: String| NetConfigError::Option {
            flag: "vsock",
            text: text.to_owned(),
            reason,
        };
        let (mut cid, mut socket) = (None, None);
        for (key, value) in key_values(text).map_err(invalid)? {
            match key {
                "cid" => {
                    cid = Some(
                        value
                            .parse::<u64>()
                            .map_err(|_| invalid(format!("cid={value} is not a number")))?,
                    )
                }
                "socket" => socket = Some(PathBuf::from(value)),
                _ => return Err(invalid(format!("unknown key {key:?}"))),
            }
        }
        match (cid, socket) {
            (Some(cid), Some(socket)) => Ok(Self { cid, socket }),
            (None, _) => Err(invalid("no cid=N".to_owned())),
            (_, None) => Err(invalid("no socket=PATH".to_owned())),
        }
    }
}

/// Splits `key=value,key=value`; a key given twice or an item without `=` is an error.
fn key_values(text: &str) -> Result<Vec<(&str, &str)>, String> {
    let mut seen = HashSet::new();
    text.split(',')
        .map(|item| {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not key=value"))?;
            if value.is_empty() {
                return Err(format!("{key}= has no value"));
            }
            if !seen.insert(key) {
                return Err(format!("{key} given twice"));
            }
            Ok((key, value))
        })
        .collect()
}

/// Checks the network devices and the vsock device together.
pub fn validate(nets: &[NetConfig], vsock: Option<&VsockConfig>) -> Result<(), NetConfigError> {
    let (mut taps, mut macs) = (HashSet::new(), HashSet::new());
    for net in nets {
        // The tap module's own rules (Linux's dev_valid_name, IFNAMSIZ), checked here already
        // so that a bad name is refused with the rest of the configuration.
        if devices::virtio::tap::validate_name(&net.tap).is_err() {
            return Err(NetConfigError::TapName(net.tap.clone()));
        }
        if !taps.insert(net.tap.as_str()) {
            return Err(NetConfigError::DuplicateTap(net.tap.clone()));
        }
        if !macs.insert(net.mac()) {
            return Err(NetConfigError::DuplicateMac(net.mac()));
        }
        match (net.ip, net.mask) {
            (Some(_), Some(mask)) => {
                // Contiguous ones from the top: the inverted mask plus one is a power of two.
                let inverted = !u32::from(mask);
                if inverted.wrapping_add(1) & inverted != 0 {
                    return Err(NetConfigError::Mask {
                        tap: net.tap.clone(),
                        mask,
                    });
                }
            }
            (None, None) => {}
            _ => {
                return Err(NetConfigError::IpWithoutMask {
                    tap: net.tap.clone(),
                });
            }
        }
        if let Some(mac) = net.mac.filter(|mac| !mac.is_nic_address()) {
            return Err(NetConfigError::Mac(mac.to_string()));
        }
    }
    if let Some(vsock) = vsock {
        if vsock.cid < 3 || vsock.cid >= u64::from(u32::MAX) {
            return Err(NetConfigError::Cid(vsock.cid));
        }
        // sun_path holds 108 bytes; `<socket>_<port>` needs up to 11 more, plus the NUL.
        let len = vsock.socket.as_os_str().len();
        if len == 0 || len > 100 {
            return Err(NetConfigError::SocketPath(vsock.socket.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_options_parse_from_the_cli_and_json() {
        let net = NetConfig::parse(
            "tap=vmtap0,ip=169.254.100.1,mask=255.255.255.0,mac=52:54:00:12:34:56",
        )
        .unwrap();
        assert_eq!(net.tap, "vmtap0");
        assert_eq!(
            net.host_address(),
            Some((
                Ipv4Addr::new(169, 254, 100, 1),
                Ipv4Addr::new(255, 255, 255, 0)
            ))
        );
        assert_eq!(net.mac().to_string(), "52:54:00:12:34:56");
        let json: NetConfig =
            serde_json::from_str(r#"{"tap": "vmtap0", "mac": "52:54:00:12:34:56"}"#).unwrap();
        assert_eq!(json.mac, net.mac);
        for (text, reason) in [
            ("ip=1.2.3.4", "no tap=NAME"),
            ("tap=a,tap=b", "tap given twice"),
            ("tap=a,ip=300.1.1.1", "ip=300.1.1.1 is not an IPv4 address"),
            ("tap=a,speed=10", "unknown key \"speed\""),
            ("tap", "\"tap\" is not key=value"),
            ("tap=", "tap= has no value"),
        ] {
            assert_eq!(
                NetConfig::parse(text).unwrap_err().to_string(),
                format!("Invalid --net {text:?}: {reason}")
            );
        }
    }

    #[test]
    fn mac_addresses_are_checked_and_generated_stably() {
        for bad in [
            "01:00:5e:00:00:01",
            "00:00:00:00:00:00",
            "52:54:00:12:34",
            "52:54:00:12:34:56:78",
            "5:54:00:12:34:56",
            "zz:54:00:12:34:56",
        ] {
            assert!(
                matches!(bad.parse::<MacAddress>(), Err(NetConfigError::Mac(_))),
                "{bad}"
            );
        }
        let generated = MacAddress::for_tap("vmtap0");
        assert_eq!(generated, MacAddress::for_tap("vmtap0"));
        assert_ne!(generated, MacAddress::for_tap("vmtap1"));
        assert_eq!(generated.0[0], 0x02);
        assert_eq!(
            generated.to_string().parse::<MacAddress>().unwrap(),
            generated
        );
    }

    #[test]
    fn validation_names_the_bad_setting() {
        let check = |nets: &[NetConfig]| validate(nets, None).map_err(|err| err.to_string());
        assert!(check(&[NetConfig::new("vmtap0"), NetConfig::new("vmtap1")]).is_ok());
        assert!(
            check(&[NetConfig::new("a-very-long-tap0")])
                .unwrap_err()
                .starts_with("Invalid tap name \"a-very-long-tap0\"")
        );
        assert!(check(&[NetConfig::new("tap/0")]).is_err());
        assert_eq!(
            check(&[NetConfig::new("t0"), NetConfig::new("t0")]).unwrap_err(),
            "Duplicate tap \"t0\""
        );
        let mac = MacAddress([0x52, 0x54, 0, 0, 0, 1]);
        let with_mac = |tap: &str| NetConfig {
            mac: Some(mac),
            ..NetConfig::new(tap)
        };
        assert_eq!(
            check(&[with_mac("t0"), with_mac("t1")]).unwrap_err(),
            "Duplicate MAC address 52:54:00:00:00:01"
        );
        let with_ip = |mask: Option<Ipv4Addr>| NetConfig {
            ip: Some(Ipv4Addr::new(169, 254, 0, 1)),
            mask,
            ..NetConfig::new("t0")
        };
        assert_eq!(
            check(&[with_ip(None)]).unwrap_err(),
            "Tap t0: ip and mask go together"
        );
        assert_eq!(
            check(&[with_ip(Some(Ipv4Addr::new(255, 0, 255, 0)))]).unwrap_err(),
            "Tap t0: invalid netmask 255.0.255.0"
        );
        assert!(check(&[with_ip(Some(Ipv4Addr::new(255, 255, 0, 0)))]).is_ok());
        assert!(check(&[with_ip(Some(Ipv4Addr::new(255, 255, 255, 255)))]).is_ok());
    }

    #[test]
    fn vsock_options_parse_and_validate() {
        let vsock = VsockConfig::parse("cid=3,socket=/tmp/vm.vsock").unwrap();
        assert_eq!(
            (vsock.cid, vsock.socket.to_str()),
            (3, Some("/tmp/vm.vsock"))
        );
        assert!(validate(&[], Some(&vsock)).is_ok());
        for cid in [0, 1, 2, u64::from(u32::MAX)] {
            let bad = VsockConfig {
                cid,
                ..vsock.clone()
            };
            assert_eq!(
                validate(&[], Some(&bad)).unwrap_err().to_string(),
                format!(
                    "Invalid vsock CID {cid}: 0, 1 and 2 are reserved (hypervisor, local, host), the largest is 4294967294"
                )
            );
        }
        let long = VsockConfig {
            socket: PathBuf::from("/".repeat(101)),
            ..vsock.clone()
        };
        assert!(matches!(
            validate(&[], Some(&long)),
            Err(NetConfigError::SocketPath(_))
        ));
        for (text, reason) in [
            ("cid=3", "no socket=PATH"),
            ("socket=/s", "no cid=N"),
            ("cid=x,socket=/s", "cid=x is not a number"),
        ] {
            assert_eq!(
                VsockConfig::parse(text).unwrap_err().to_string(),
                format!("Invalid --vsock {text:?}: {reason}")
            );
        }
    }
}
