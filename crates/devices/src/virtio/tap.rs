//! A Linux tap interface (`/dev/net/tun`, `IFF_TAP`) carrying virtio-net frames.
//!
//! Every frame read or written starts with the 12-byte `virtio_net_hdr_v1` (`IFF_VNET_HDR`,
//! `TUNSETVNETHDRSZ`), so the guest's checksum and segmentation offloads pass through the tap
//! untouched. The descriptor is non-blocking: a read with nothing queued fails with
//! `WouldBlock`. A tap this process created (rather than one made persistent beforehand
//! with `ip tuntap add`) disappears when the last descriptor on it is closed.

use std::fs::{File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vm_memory::VolatileSlice;

/// The virtio-net header on every frame: `struct virtio_net_hdr_v1`, with `num_buffers`.
pub const VNET_HDR_LEN: usize = 12;
/// The longest interface name Linux takes (`IFNAMSIZ` minus the NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// Failures opening or configuring a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name cannot be an interface's.
    #[error("Invalid tap name {name:?}: {reason}")]
    Name {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `/dev/net/tun` could not be opened (no `tun` module, or no access to the node).
    #[error("Cannot open /dev/net/tun")]
    OpenTun(#[source] io::Error),
    /// Creating a tap needs CAP_NET_ADMIN; attaching to an existing one needs it too unless
    /// the tap belongs to this user (`ip tuntap add NAME mode tap user USER`).
    #[error(
        "Cannot attach to tap {name} (creating a tap needs CAP_NET_ADMIN; an existing one must \
         belong to this user)"
    )]
    Permission {
        /// The tap.
        name: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Another process (or another device of this one) has the tap open.
    #[error("Cannot attach to tap {0}: it is in use")]
    Busy(String),
    /// An interface of that name exists and is not a single-queue tap.
    #[error("Cannot attach to {0}: the interface exists and is not a single-queue tap")]
    NotATap(String),
    /// Any other failure of `TUNSETIFF`.
    #[error("Cannot attach to tap {name}")]
    Attach {
        /// The tap.
        name: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// `TUNSETVNETHDRSZ` failed.
    #[error("Cannot set the virtio-net header size of tap {name}")]
    VnetHeader {
        /// The tap.
        name: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// `TUNSETOFFLOAD` refused the flags.
    #[error("Cannot set offloads {flags:#x} on tap {name}")]
    Offload {
        /// The tap.
        name: String,
        /// The `TUN_F_*` flags.
        flags: u32,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// An interface ioctl (address, netmask, flags, MTU) failed.
    #[error("Cannot {what} of tap {name}")]
    Interface {
        /// The tap.
        name: String,
        /// What was being done, e.g. "set the address".
        what: &'static str,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// An open tap, ready to carry frames with a virtio-net header.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the tap `name`, creating it if there is none (that needs CAP_NET_ADMIN).
    pub fn open(name: &str) -> Result<Self, TapError> {
        validate_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut request = InterfaceRequest::new(name);
        request.0.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes the `ifreq` it is given, which lives across the
        // call.
        let result = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request.0) };
        if result < 0 {
            let source = io::Error::last_os_error();
            let name = name.to_owned();
            return Err(match source.raw_os_error() {
                Some(libc::EPERM | libc::EACCES) => TapError::Permission { name, source },
                Some(libc::EBUSY) => TapError::Busy(name),
                Some(libc::EINVAL) => TapError::NotATap(name),
                _ => TapError::Attach { name, source },
            });
        }
        let tap = Self {
            file,
            // The kernel writes the name back; it is the one given, which was validated.
            name: request.name(),
        };
        let header_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int, which lives across the call.
        let result =
            unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &header_len) };
        if result < 0 {
            return Err(TapError::VnetHeader {
                name: tap.name.clone(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(tap)
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets which offloads the tap may use in the frames it hands over (`TUN_F_*`): the
    /// segmentation and checksum work the guest agreed to do itself. 0 turns them all off.
    pub fn set_offload(&self, flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is shared.
        let result = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if result < 0 {
            return Err(TapError::Offload {
                name: self.name.clone(),
                flags,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Gives the host's end of the tap the address `ip` with `netmask` and brings it up
    /// (CAP_NET_ADMIN).
    pub fn configure_host(&self, ip: Ipv4Addr, netmask: Ipv4Addr) -> Result<(), TapError> {
        let socket = self.control_socket()?;
        let mut request = InterfaceRequest::new(&self.name);
        request.0.ifr_ifru.ifru_addr = inet_sockaddr(ip);
        self.interface_ioctl(&socket, libc::SIOCSIFADDR, &mut request, "set the address")?;
        let mut request = InterfaceRequest::new(&self.name);
        request.0.ifr_ifru.ifru_netmask = inet_sockaddr(netmask);
        self.interface_ioctl(
            &socket,
            libc::SIOCSIFNETMASK,
            &mut request,
            "set the netmask",
        )?;
        self.bring_up(&socket)
    }

    /// Brings the interface up (CAP_NET_ADMIN), for a tap whose addresses are set elsewhere.
    pub fn up(&self) -> Result<(), TapError> {
        let socket = self.control_socket()?;
        self.bring_up(&socket)
    }

    /// The interface's MTU.
    pub fn mtu(&self) -> Result<u32, TapError> {
        let socket = self.control_socket()?;
        let mut request = InterfaceRequest::new(&self.name);
        self.interface_ioctl(&socket, libc::SIOCGIFMTU, &mut request, "read the MTU")?;
        // SAFETY: SIOCGIFMTU filled `ifru_mtu`; every bit pattern is a valid int.
        let mtu = unsafe { request.0.ifr_ifru.ifru_mtu };
        Ok(u32::try_from(mtu).unwrap_or(0))
    }

    /// Reads one frame, virtio-net header first, into `buffer`; `WouldBlock` when none is
    /// queued. A frame longer than `buffer` is cut short (and its full length returned).
    pub fn read_frame(&self, buffer: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: read writes at most `buffer.len()` bytes into `buffer`, which we own.
            let read = unsafe {
                libc::read(
                    self.file.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                )
            };
            if read >= 0 {
                return Ok(read as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Writes one frame, virtio-net header first, gathered from `buffers` in order (one
    /// `writev`: the tap takes a frame whole or not at all).
    pub fn write_frame(&self, buffers: &[VolatileSlice<'_>]) -> io::Result<usize> {
        let iovecs: Vec<libc::iovec> = buffers
            .iter()
            .map(|buffer| libc::iovec {
                iov_base: buffer.ptr_guard().as_ptr().cast_mut().cast(),
                iov_len: buffer.len(),
            })
            .collect();
        let count = libc::c_int::try_from(iovecs.len())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        loop {
            // SAFETY: each iovec covers a `VolatileSlice` of mapped memory that the borrow of
            // `buffers` keeps mapped for this call; the kernel only reads from it.
            let written = unsafe { libc::writev(self.file.as_raw_fd(), iovecs.as_ptr(), count) };
            if written >= 0 {
                return Ok(written as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// An AF_INET datagram socket, the handle interface ioctls go through.
    fn control_socket(&self) -> Result<OwnedFd, TapError> {
        // SAFETY: socket creates a descriptor and touches no memory of ours.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(TapError::Interface {
                name: self.name.clone(),
                what: "open a socket to configure the interface",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn bring_up(&self, socket: &OwnedFd) -> Result<(), TapError> {
        let mut request = InterfaceRequest::new(&self.name);
        self.interface_ioctl(socket, libc::SIOCGIFFLAGS, &mut request, "read the flags")?;
        // SAFETY: SIOCGIFFLAGS filled `ifru_flags`; every bit pattern is a valid short.
        let flags = unsafe { request.0.ifr_ifru.ifru_flags };
        request.0.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
        self.interface_ioctl(socket, libc::SIOCSIFFLAGS, &mut request, "bring up")
    }

    fn interface_ioctl(
        &self,
        socket: &OwnedFd,
        request_code: libc::Ioctl,
        request: &mut InterfaceRequest,
        what: &'static str,
    ) -> Result<(), TapError> {
        // SAFETY: the SIOC[GS]IF* ioctls read and write only the `ifreq` they are given,
        // which lives across the call.
        let result = unsafe { libc::ioctl(socket.as_raw_fd(), request_code, &mut request.0) };
        if result < 0 {
            return Err(TapError::Interface {
                name: self.name.clone(),
                what,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Reads the interface's IPv4 address and netmask back (tests).
    #[cfg(test)]
    pub(crate) fn host_address(&self) -> Result<(Ipv4Addr, Ipv4Addr), TapError> {
        let socket = self.control_socket()?;
        let read = |code, what| -> Result<Ipv4Addr, TapError> {
            let mut request = InterfaceRequest::new(&self.name);
            self.interface_ioctl(&socket, code, &mut request, what)?;
            // SAFETY: the ioctl filled `ifru_addr` (the netmask shares its place).
            let data = unsafe { request.0.ifr_ifru.ifru_addr.sa_data };
            Ok(Ipv4Addr::new(
                byte(data[2]),
                byte(data[3]),
                byte(data[4]),
                byte(data[5]),
            ))
        };
        Ok((
            read(libc::SIOCGIFADDR, "read the address")?,
            read(libc::SIOCGIFNETMASK, "read the netmask")?,
        ))
    }

    /// Whether the interface is up (tests).
    #[cfg(test)]
    pub(crate) fn is_up(&self) -> Result<bool, TapError> {
        let socket = self.control_socket()?;
        let mut request = InterfaceRequest::new(&self.name);
        self.interface_ioctl(&socket, libc::SIOCGIFFLAGS, &mut request, "read the flags")?;
        // SAFETY: SIOCGIFFLAGS filled `ifru_flags`.
        let flags = unsafe { request.0.ifr_ifru.ifru_flags };
        Ok(flags & libc::IFF_UP as libc::c_short != 0)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// Checks `name` as Linux's `dev_valid_name` does, with readable reasons.
pub fn validate_name(name: &str) -> Result<(), TapError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("it is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("'.' and '..' are not interface names")
    } else if name.contains(['/', ':']) {
        Some("it contains '/' or ':'")
    } else if !name.bytes().all(|byte| byte.is_ascii_graphic()) {
        Some("it contains whitespace, NUL, control or non-ASCII characters")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(TapError::Name {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// A `struct ifreq` naming one interface.
struct InterfaceRequest(libc::ifreq);

impl InterfaceRequest {
    /// A request for the interface `name`, which [`validate_name`] accepted (longer names are
    /// cut, leaving the NUL).
    fn new(name: &str) -> Self {
        // SAFETY: `ifreq` is a C struct of integers, arrays and a union of those; all zeros is
        // a valid value (an empty name, zero flags).
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (slot, byte) in request
            .ifr_name
            .iter_mut()
            .zip(name.bytes().take(MAX_NAME_LEN))
        {
            *slot = byte as libc::c_char;
        }
        Self(request)
    }

    fn name(&self) -> String {
        let bytes: Vec<u8> = self
            .0
            .ifr_name
            .iter()
            .take_while(|&&byte| byte != 0)
            .map(|&c| byte(c))
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// A C `char` as the byte it holds: `c_char` is `i8` on x86_64 and `u8` on aarch64, where the
/// cast does nothing.
#[allow(clippy::unnecessary_cast)]
fn byte(c: libc::c_char) -> u8 {
    c as u8
}

/// `ip` as a `struct sockaddr` holding a `sockaddr_in` (port 0).
fn inet_sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let mut data = [0 as libc::c_char; 14];
    // sockaddr_in: the port (2 bytes) comes first, then the address in network order.
    for (slot, octet) in data[2..6].iter_mut().zip(ip.octets()) {
        *slot = octet as libc::c_char;
    }
    libc::sockaddr {
        sa_family: libc::AF_INET as libc::sa_family_t,
        sa_data: data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::net::tests::{TestTap, test_tap};

    #[test]
    fn names_are_validated_like_linux_does() {
        for good in ["tap0", "vmtap-1", "a", "fifteen-bytes-x", "tap%d", "t.1"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for (bad, reason) in [
            ("", "it is empty"),
            ("sixteen-bytes-xx", "it is longer than 15 bytes"),
            (".", "'.' and '..' are not interface names"),
            ("..", "'.' and '..' are not interface names"),
            ("a/b", "it contains '/' or ':'"),
            ("eth0:1", "it contains '/' or ':'"),
            (
                "tap 0",
                "it contains whitespace, NUL, control or non-ASCII characters",
            ),
            (
                "tap\0",
                "it contains whitespace, NUL, control or non-ASCII characters",
            ),
            (
                "tap\t",
                "it contains whitespace, NUL, control or non-ASCII characters",
            ),
            (
                "tâp",
                "it contains whitespace, NUL, control or non-ASCII characters",
            ),
        ] {
            match validate_name(bad) {
                Err(TapError::Name { name, reason: got }) => {
                    assert_eq!((name.as_str(), got), (bad, reason))
                }
                other => panic!("{bad:?}: {other:?}"),
            }
            assert!(
                matches!(Tap::open(bad), Err(TapError::Name { .. })),
                "{bad:?}"
            );
        }
        let err = validate_name("a b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Invalid tap name \"a b\": it contains whitespace, NUL, control or non-ASCII characters"
        );
    }

    #[test]
    fn a_tap_is_created_configured_and_removed_on_close() {
        let Some(TestTap { tap, name }) = test_tap() else {
            return;
        };
        assert_eq!(tap.name(), name);
        assert!(!tap.is_up().unwrap());
        let (ip, mask) = (
            Ipv4Addr::new(169, 254, 77, 1),
            Ipv4Addr::new(255, 255, 255, 0),
        );
        tap.configure_host(ip, mask).unwrap();
        assert_eq!(tap.host_address().unwrap(), (ip, mask));
        assert!(tap.is_up().unwrap());
        assert_eq!(tap.mtu().unwrap(), 1500);

        tap.set_offload(
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN,
        )
        .unwrap();
        tap.set_offload(0).unwrap();
        let err = tap.set_offload(0x8000_0000).unwrap_err();
        assert!(
            matches!(
                err,
                TapError::Offload {
                    flags: 0x8000_0000,
                    ..
                }
            ),
            "{err}"
        );

        // A single-queue tap takes one reader.
        assert!(matches!(Tap::open(&name), Err(TapError::Busy(busy)) if busy == name));
        let sysfs = format!("/sys/class/net/{name}");
        assert!(std::path::Path::new(&sysfs).exists());
        drop(tap);
        // Closing the only descriptor on a tap this process created deletes it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::path::Path::new(&sysfs).exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "{name} outlived its tap"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn an_interface_that_is_not_a_tap_is_refused() {
        // Only when taps can be made here at all (root, a tun module).
        let Some(_probe) = test_tap() else {
            return;
        };
        let err = Tap::open("lo").unwrap_err();
        assert!(
            matches!(err, TapError::NotATap(ref name) if name == "lo"),
            "{err}"
        );
    }
}
