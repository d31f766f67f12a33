//! A Linux guest on a virtio-net tap, across suspend-to-RAM:
//!
//! * ping works both ways, with 1 and 4 vCPUs;
//! * one TCP connection between this test and a guest program stays open across 10 rtcwake
//!   cycles, with 1 MiB each way after each wakeup, every byte checked in place (`guest-agent`'s
//!   exchange: nothing lost, repeated, reordered or changed);
//! * datagrams sent to the sleeping guest wait in the tap and arrive after it wakes, and the
//!   VMM uses no CPU while the guest sleeps and nothing arrives.
//!
//! Needs an arm64 KVM host with CAP_NET_ADMIN and the testbed's guest (`VMM_TEST_KERNEL`,
//! `VMM_TEST_INITRD`, `VMM_TEST_ROOTFS`, whose init understands `vmmtest=net` and has
//! `guest-agent`). The emulated test host has no network device of its own: every address is
//! link-local on the test's tap.
#![cfg(target_arch = "aarch64")]

mod common;

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};

use vmm::events::{VmEventKind, WakeSource};
use vmm::{MacAddress, NetConfig, VmState};

use common::guest::{self, Guest, cpu_time, field};

const MIB: u64 = 1 << 20;
const EXCHANGE_PORT: u16 = 5001;
const UDP_PORT: u16 = 7000;

/// The host (`.1`) and guest (`.2`) ends of 169.254.`subnet`.0/24.
fn addresses(subnet: u8) -> (Ipv4Addr, Ipv4Addr) {
    (
        Ipv4Addr::new(169, 254, subnet, 1),
        Ipv4Addr::new(169, 254, subnet, 2),
    )
}

/// Boots the guest in `mode` on its root disk with a virtio-net device on `tap`, which vmm
/// creates and gives the host address of `subnet`.
fn boot_on_tap(mode: &str, extra: &str, cpus: u32, tap: &str, subnet: u8) -> (Guest, NetConfig) {
    let (host, guest_ip) = addresses(subnet);
    let scratch = guest::scratch("linux-net-");
    let mut config = guest::config(
        &scratch,
        mode,
        // no_console_suspend: a message the guest prints while it suspends or resumes (an
        // oops) reaches the console at once instead of dying in its buffer.
        &format!("net={guest_ip}/24 host={host} no_console_suspend {extra}"),
        cpus,
        true,
    );
    let net = NetConfig {
        ip: Some(host),
        mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
        ..NetConfig::new(tap)
    };
    config.nets = vec![net.clone()];
    (Guest::start(config, scratch), net)
}

/// Pings `address` three times from this host; returns whether all came back.
fn ping(address: Ipv4Addr) -> bool {
    let output = std::process::Command::new("ping")
        .args(["-c", "3", "-W", "5"])
        .arg(address.to_string())
        .output()
        .expect("run ping");
    println!(
        "host ping: {}",
        String::from_utf8_lossy(&output.stdout).trim()
    );
    output.status.success()
}

/// Checks ping both ways: the guest pings the host, the host pings the guest.
fn pings_both_ways(guest: &Guest, guest_ip: Ipv4Addr) {
    let up = guest.wait_console("@@guest net-up", Duration::from_secs(120));
    assert_eq!(field(&up, "rc"), Some("0"), "{up}");
    assert!(ping(guest_ip), "the guest did not answer the host's ping");
    let line = guest.wait_console("@@guest ping ", Duration::from_secs(60));
    assert_eq!(field(&line, "rc"), Some("0"), "{line}");
    assert_eq!(field(&line, "received"), Some("3"), "{line}");
    let line = guest.wait_console("@@guest pinged", Duration::from_secs(60));
    let echos: u32 = field(&line, "in_echos").unwrap().parse().unwrap();
    assert!(echos >= 3, "{line}");
}

#[test]
fn ping_works_both_ways_with_one_vcpu() {
    test_utils::require_kvm!();
    let (guest, _) = boot_on_tap("net", "", 1, "vmmnet1", 101);
    pings_both_ways(&guest, addresses(101).1);
    guest.powers_off();
}

/// Adds a permanent ARP entry, so that the host sends to a guest that sleeps and cannot
/// answer ARP (SIOCSARP, as `arp -s` does).
fn add_permanent_arp(tap: &str, ip: Ipv4Addr, mac: MacAddress) {
    // SAFETY: arpreq is plain data; all-zero is a valid start.
    let mut request: libc::arpreq = unsafe { std::mem::zeroed() };
    // SAFETY: arp_pa is a sockaddr large enough for a sockaddr_in, which is written in place.
    unsafe {
        let address = std::ptr::from_mut(&mut request.arp_pa).cast::<libc::sockaddr_in>();
        (*address).sin_family = libc::AF_INET as libc::sa_family_t;
        (*address).sin_addr.s_addr = u32::from(ip).to_be();
    }
    request.arp_ha.sa_family = libc::ARPHRD_ETHER;
    for (to, byte) in request.arp_ha.sa_data.iter_mut().zip(mac.0) {
        *to = byte as libc::c_char;
    }
    request.arp_flags = libc::ATF_PERM | libc::ATF_COM;
    for (to, byte) in request.arp_dev.iter_mut().zip(tap.bytes()) {
        *to = byte as libc::c_char;
    }
    let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
    // SAFETY: SIOCSARP reads the arpreq we own.
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SIOCSARP,
            &request,
        )
    };
    assert_eq!(rc, 0, "SIOCSARP: {}", std::io::Error::last_os_error());
}

#[test]
fn a_tcp_connection_survives_ten_suspends_and_frames_wait_for_a_sleeping_guest() {
    test_utils::require_kvm!();
    const CYCLES: u32 = 10;
    let subnet = 104;
    let (host, guest_ip) = addresses(subnet);
    let (guest, net) = boot_on_tap(
        "net",
        &format!("peer={host}:{EXCHANGE_PORT} cycles={CYCLES} wake=3 retry=1 udp={UDP_PORT}"),
        4,
        "vmmnet4",
        subnet,
    );
    // vmm gave the tap its address when the VM was created; the guest connects seconds later.
    let listener = TcpListener::bind((host, EXCHANGE_PORT)).unwrap();
    pings_both_ways(&guest, guest_ip);

    let (mut stream, from) = listener.accept().unwrap();
    assert_eq!(from.ip(), guest_ip);
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut rounds = vec![guest_agent::exchange_as_host(&mut stream, 0, MIB).unwrap()];
    for round in 1..=CYCLES {
        guest.wait_event(Duration::from_secs(180), |kind| {
            matches!(kind, VmEventKind::Resumed { .. }).then_some(())
        });
        let report = guest_agent::exchange_as_host(&mut stream, round, MIB).unwrap_or_else(|err| {
            panic!(
                "round {round}: {err}\n{}\nconsole:\n{}",
                guest.diagnose(),
                guest.console_text()
            )
        });
        println!("round {round} after wakeup {round}: {report:?}");
        rounds.push(report);
    }
    assert!(rounds.iter().all(|report| report.ok()), "{rounds:?}");
    let done = guest.wait_console("@@guest cycles-done", Duration::from_secs(120));
    assert_eq!(field(&done, "good"), Some("10"), "{done}");
    let console = guest.console_text();
    let guest_rounds: Vec<&str> = console
        .lines()
        .filter(|line| line.contains("@@guest exchange round="))
        .collect();
    assert_eq!(guest_rounds.len(), CYCLES as usize + 1, "{guest_rounds:?}");
    assert!(
        guest_rounds
            .iter()
            .all(|line| field(line, "ok") == Some("1")),
        "{guest_rounds:?}"
    );

    // Frames for a sleeping guest: nothing wakes it (no wake=on), nothing spins in vmm, and
    // they are delivered once the host wakes it.
    guest.wait_console("@@guest udp-ready", Duration::from_secs(60));
    guest.wait_event(Duration::from_secs(60), |kind| {
        matches!(kind, VmEventKind::Suspended { .. }).then_some(())
    });
    let (cpu_before, wall_before) = (cpu_time(), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let share = (cpu_time() - cpu_before).as_secs_f64() / wall_before.elapsed().as_secs_f64();
    println!(
        "asleep, no frames: vmm CPU {:.2}% of wall time",
        share * 100.0
    );
    assert!(
        share < 0.01,
        "vmm used {:.2}% CPU while the guest slept",
        share * 100.0
    );
    add_permanent_arp(&net.tap, guest_ip, net.mac());
    let sender = UdpSocket::bind((host, 0)).unwrap();
    for index in 0..20u32 {
        sender
            .send_to(&index.to_le_bytes(), (guest_ip, UDP_PORT))
            .unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        guest.handle.state(),
        VmState::Suspended,
        "a frame woke the guest"
    );
    guest.handle.press_wake_button().unwrap();
    let source = guest.wait_event(Duration::from_secs(60), |kind| match kind {
        VmEventKind::Resumed { source, .. } => Some(*source),
        _ => None,
    });
    assert_eq!(source, WakeSource::Gpio);
    let line = guest.wait_console("@@guest udp received=", Duration::from_secs(60));
    assert_eq!(field(&line, "received"), Some("20"), "{line}");
    drop(stream);
    guest.powers_off();
}
