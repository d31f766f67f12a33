//! Decodes the DTB with an independent parser (the `fdt` crate) and checks it the way
//! Linux reads it: by path, compatible, phandle and cell values, never by bytes.

use ::fdt::Fdt;
use ::fdt::node::FdtNode;

use super::*;
use crate::layout::{GIC_REDIST_SIZE, RAM_START};

const MIB: u64 = 1 << 20;

fn config() -> FdtConfig {
    FdtConfig {
        // Bit 31 is RES1 in MPIDR_EL1; the third vCPU sits in cluster 1 (Aff1).
        vcpu_mpidrs: vec![0x8000_0000, 0x8000_0001, 0x8000_0100],
        ram: GuestRegion {
            start: RAM_START,
            size: 512 * MIB,
        },
        cmdline: "console=ttyS0 reboot=k panic=1".into(),
        initrd: Some(GuestRegion {
            start: 0x5f00_0000,
            size: 0x12345,
        }),
        serial: true,
        rtc: true,
        gpio: true,
        gpio_keys: vec![GpioKey::wake(0), GpioKey::power(1)],
        virtio_mmio: Vec::new(),
        psci_version: PsciVersion::new(1, 1),
    }
}

fn cells(node: FdtNode, name: &str) -> Vec<u32> {
    let value = node
        .property(name)
        .unwrap_or_else(|| panic!("{} has no {name}", node.name))
        .value;
    value
        .chunks(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
        .collect()
}

fn u64s(node: FdtNode, name: &str) -> Vec<u64> {
    let cells = cells(node, name);
    cells
        .chunks(2)
        .map(|c| (u64::from(c[0]) << 32) | u64::from(c[1]))
        .collect()
}

fn string_list<'a>(node: FdtNode<'_, 'a>, name: &str) -> Vec<&'a str> {
    let value = node.property(name).unwrap().value;
    value
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| std::str::from_utf8(s).unwrap())
        .collect()
}

fn has(node: FdtNode, name: &str) -> bool {
    node.property(name).is_some()
}

/// Follows a one-cell phandle property to its node.
fn deref<'b, 'a>(fdt: &'b Fdt<'a>, node: FdtNode<'b, 'a>, name: &str) -> FdtNode<'b, 'a> {
    fdt.find_phandle(cells(node, name)[0])
        .unwrap_or_else(|| panic!("{name} dangles"))
}

fn node<'b, 'a>(fdt: &'b Fdt<'a>, path: &str) -> FdtNode<'b, 'a> {
    fdt.find_node(path).unwrap_or_else(|| panic!("no {path}"))
}

#[test]
fn root_uses_64_bit_cells_and_the_gic() {
    let dtb = create_fdt(&config()).unwrap();
    let fdt = Fdt::new(&dtb).unwrap();
    let root = node(&fdt, "/");
    assert_eq!(fdt.root().compatible().first(), "linux,dummy-virt");
    assert_eq!(cells(root, "#address-cells"), [2]);
    assert_eq!(cells(root, "#size-cells"), [2]);
    let gic = deref(&fdt, root, "interrupt-parent");
    assert_eq!(gic.name, "intc@8000000");
    assert!(has(gic, "interrupt-controller"));
}

#[test]
fn cpus_carry_affinity_and_psci() {
    let dtb = create_fdt(&config()).unwrap();
    let fdt = Fdt::new(&dtb).unwrap();
    let regs: Vec<usize> = fdt.cpus().map(|cpu| cpu.ids().first()).collect();
    assert_eq!(regs, [0, 1, 0x100]);
    for cpu in fdt.cpus() {
        assert_eq!(cpu.property("device_type").unwrap().as_str(), Some("cpu"));
        assert_eq!(
            cpu.property("compatible").unwrap().as_str(),
            Some("arm,arm-v8")
        );
        assert_eq!(
            cpu.property("enable-method").unwrap().as_str(),
            Some("psci")
        );
    }
    assert!(fdt.find_node("/cpus/cpu@100").is_some());
    let psci = node(&fdt, "/psci");
    assert_eq!(
        string_list(psci, "compatible"),
        ["arm,psci-1.0", "arm,psci-0.2"]
    );
    assert_eq!(psci.property("method").unwrap().as_str(), Some("hvc"));
}

#[test]
fn memory_and_chosen() {
    let dtb = create_fdt(&config()).unwrap();
    let fdt = Fdt::new(&dtb).unwrap();
    let memory = node(&fdt, "/memory@40000000");
    assert_eq!(
        memory.property("device_type").unwrap().as_str(),
        Some("memory")
    );
    let region = fdt.memory().regions().next().unwrap();
    assert_eq!(region.starting_address as u64, RAM_START);
    assert_eq!(region.size, Some(512 << 20));

    let chosen = fdt.chosen();
    assert_eq!(chosen.bootargs(), Some("console=ttyS0 reboot=k panic=1"));
    assert_eq!(chosen.stdout().unwrap().name, "uart@9000000");
    let chosen = node(&fdt, "/chosen");
    assert_eq!(u64s(chosen, "linux,initrd-start"), [0x5f00_0000]);
    assert_eq!(u64s(chosen, "linux,initrd-end"), [0x5f01_2345]);
}

#[test]
fn optional_parts_are_left_out() {
    let config = FdtConfig {
        initrd: None,
        serial: false,
        rtc: false,
        gpio: false,
        gpio_keys: vec![],
        ..config()
    };
    let dtb = create_fdt(&config).unwrap();
    let fdt = Fdt::new(&dtb).unwrap();
    let chosen = node(&fdt, "/chosen");
    for name in ["linux,initrd-start", "linux,initrd-end", "stdout-path"] {
        assert!(!has(chosen, name), "{name}");
    }
    for path in ["/uart", "/rtc", "/gpio", "/gpio-keys"] {
        assert!(fdt.find_node(path).is_none(), "{path}");
    }
    assert!(fdt.find_node("/timer").is_some());
}

#[test]
fn gic_covers_one_redistributor_per_vcpu() {
    for vcpus in [1, 3, MAX_VCPUS] {
        let config = FdtConfig {
            vcpu_mpidrs: (0..vcpus as u64).collect(),
            ..config()
        };
        let dtb = create_fdt(&config).unwrap();
        let fdt = Fdt::new(&dtb).unwrap();
        let gic = node(&fdt, "/intc@8000000");
        assert_eq!(string_list(gic, "compatible"), ["arm,gic-v3"]);
        assert_eq!(gic.interrupt_cells(), Some(3));
        assert_eq!(
            u64s(gic, "reg"),
            [
                0x0800_0000,
                0x1_0000,
                0x080A_0000,
                vcpus as u64 * GIC_REDIST_SIZE
            ]
        );
        assert_eq!(cells(gic, "interrupts"), [1, 9, 4]);
        assert!(has(gic, "ranges"));
        assert_eq!(fdt.cpus().count(), vcpus);
    }
}

#[test]
fn timer_lists_the_four_ppis() {
    let dtb = create_fdt(&config()).unwrap();
    let fdt = Fdt::new(&dtb).unwrap();
    let timer = node(&fdt, "/timer");
    assert_eq!(string_list(timer, "compatible"), ["arm,armv8-timer"]);
    assert!(has(timer, "always-on"));
    assert_eq!(
        cells(timer, "interrupts"),
        [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]
    );
}

#[test]
fn devices_have_reg_interrupts_and_clock() {
    let dtb = create_fdt(&config()).unwrap();
    let fdt = Fdt::new(&dtb).unwrap();
    let expected: [(&str, &[&str], u64, [u32; 3]); 3] = [
        ("/uart@9000000", &["ns16550a"], 0x0900_0000, [0, 1, 1]),
        (
            "/rtc@9010000",
            &["arm,pl031", "arm,primecell"],
            0x0901_0000,
            [0, 2, 4],
        ),
        (
            "/gpio@9030000",
            &["arm,pl061", "arm,primecell"],
            0x0903_0000,
            [0, 7, 4],
        ),
    ];
    for (path, compatible, base, interrupts) in expected {
        let device = node(&fdt, path);
        assert_eq!(string_list(device, "compatible"), compatible, "{path}");
        assert_eq!(u64s(device, "reg"), [base, 0x1000], "{path}");
        assert_eq!(cells(device, "interrupts"), interrupts, "{path}");
        assert_eq!(string_list(device, "clock-names"), ["apb_pclk"], "{path}");
        let clock = deref(&fdt, device, "clocks");
        assert_eq!(clock.name, "apb-pclk");
        assert_eq!(string_list(clock, "compatible"), ["fixed-clock"]);
        assert_eq!(cells(clock, "clock-frequency"), [24_000_000]);
        assert_eq!(cells(clock, "#clock-cells"), [0]);
    }
    let gpio = node(&fdt, "/gpio@9030000");
    assert!(has(gpio, "gpio-controller"));
    assert_eq!(cells(gpio, "#gpio-cells"), [2]);
    assert!(has(gpio, "interrupt-controller"));
    assert_eq!(gpio.interrupt_cells(), Some(2));
}

#[test]
fn gpio_keys_reference_the_pl061() {
    let dtb = create_fdt(&config()).unwrap();
    let fdt = Fdt::new(&dtb).unwrap();
    let keys = node(&fdt, "/gpio-keys");
    assert_eq!(string_list(keys, "compatible"), ["gpio-keys"]);
    let children: Vec<_> = keys.children().collect();
    let names: Vec<_> = children.iter().map(|key| key.name).collect();
    assert_eq!(names, ["key-wake", "key-power"]);
    let expected = [("wake", 143, 0, true), ("power", 116, 1, false)];
    for (key, (label, code, pin, wakeup)) in children.into_iter().zip(expected) {
        assert_eq!(key.property("label").unwrap().as_str(), Some(label));
        assert_eq!(cells(key, "linux,code"), [code]);
        let gpios = cells(key, "gpios");
        assert_eq!(gpios[1..], [pin, 0]);
        let controller = deref(&fdt, key, "gpios");
        assert_eq!(controller.name, "gpio@9030000");
        assert_eq!(has(key, "wakeup-source"), wakeup, "{label}");
    }
}

#[test]
fn dtb_is_small_and_aligned_for_the_loader() {
    let dtb = create_fdt(&config()).unwrap();
    assert!(dtb.len() < 4096, "{}", dtb.len());
    assert_eq!(Fdt::new(&dtb).unwrap().total_size(), dtb.len());
}

#[test]
fn rejects_bad_configs() {
    let check = |config: FdtConfig, expected: &str| {
        let err = create_fdt(&config).unwrap_err();
        assert_eq!(err.to_string(), expected);
    };
    check(
        FdtConfig {
            vcpu_mpidrs: vec![],
            ..config()
        },
        "No vCPUs",
    );
    check(
        FdtConfig {
            vcpu_mpidrs: (0..124).collect(),
            ..config()
        },
        "124 vCPUs exceed the maximum of 123",
    );
    check(
        FdtConfig {
            vcpu_mpidrs: vec![1, 0xFF00_0000_0001],
            ..config()
        },
        "Duplicate vCPU affinity 0xff0000000001",
    );
    check(
        FdtConfig {
            cmdline: "x".repeat(2048),
            ..config()
        },
        "Command line of 2048 bytes exceeds 2047",
    );
    let beyond = GuestRegion {
        start: RAM_START + 512 * MIB - 4,
        size: 8,
    };
    check(
        FdtConfig {
            initrd: Some(beyond),
            ..config()
        },
        "Initrd is outside RAM",
    );
    let wrapping = GuestRegion {
        start: RAM_START,
        size: u64::MAX,
    };
    check(
        FdtConfig {
            initrd: Some(wrapping),
            ..config()
        },
        "Initrd is outside RAM",
    );
    check(
        FdtConfig {
            gpio: false,
            ..config()
        },
        "GPIO keys need the GPIO controller",
    );
    let key = |name: &str, pin| GpioKey {
        name: name.into(),
        ..GpioKey::wake(pin)
    };
    check(
        FdtConfig {
            gpio_keys: vec![key("wake", 0)],
            ..config()
        },
        "Invalid GPIO key name \"wake\"",
    );
    check(
        FdtConfig {
            gpio_keys: vec![key("key-a", 0), key("key-a", 1)],
            ..config()
        },
        "Duplicate GPIO key name \"key-a\"",
    );
    check(
        FdtConfig {
            gpio_keys: vec![GpioKey::wake(8)],
            ..config()
        },
        "GPIO pin 8 is not below 8",
    );
    check(
        FdtConfig {
            gpio_keys: vec![GpioKey::wake(3), GpioKey::power(3)],
            ..config()
        },
        "Duplicate GPIO pin 3",
    );
}

#[test]
fn the_psci_compatible_follows_the_version() {
    let dtb = create_fdt(&FdtConfig {
        psci_version: PsciVersion::V0_2,
        ..config()
    })
    .unwrap();
    let fdt = Fdt::new(&dtb).unwrap();
    assert_eq!(
        string_list(node(&fdt, "/psci"), "compatible"),
        ["arm,psci-0.2"]
    );
}

#[test]
fn the_same_config_gives_the_same_bytes() {
    // A hibernated guest resumes only on the machine it left: nothing may vary between boots.
    assert_eq!(
        create_fdt(&config()).unwrap(),
        create_fdt(&config()).unwrap()
    );
}

#[test]
fn writer_errors_keep_their_source() {
    let err = create_fdt(&FdtConfig {
        cmdline: "a\0b".into(),
        ..config()
    })
    .unwrap_err();
    assert_eq!(err.to_string(), "Cannot write the device tree");
    let source = std::error::Error::source(&err).unwrap();
    assert_eq!(source.to_string(), vm_fdt::Error::InvalidString.to_string());
}

#[test]
fn rejects_a_dtb_over_2_mib() {
    // Labels are the one unbounded input: eight 300 KiB labels make a 2.4 MiB DTB.
    let gpio_keys = (0..PL061_PINS)
        .map(|pin| GpioKey {
            name: format!("key-{pin}"),
            label: "x".repeat(300 << 10),
            ..GpioKey::power(pin)
        })
        .collect();
    let err = create_fdt(&FdtConfig {
        gpio_keys,
        ..config()
    })
    .unwrap_err();
    assert!(
        matches!(err, FdtError::TooLarge(len) if len > 2 << 20),
        "{err}"
    );
}

#[test]
fn key_names_follow_the_gpio_keys_schema() {
    for good in [
        "key",
        "key-wake",
        "key-power",
        "button-1",
        "lid-switch",
        "power-key",
        "event",
    ] {
        assert!(valid_key_name(good), "{good}");
    }
    for bad in [
        "wake", "key-", "-key", "Key-wake", "key_wake", "key@1", "keys", "", "key-a b",
    ] {
        assert!(!valid_key_name(bad), "{bad}");
    }
}

#[test]
fn virtio_mmio_devices_get_edge_triggered_nodes() {
    let dtb = create_fdt(&FdtConfig {
        virtio_mmio: vec![
            VirtioMmioNode {
                base: 0x0A00_0000,
                size: 0x1000,
                spi: 16,
            },
            VirtioMmioNode {
                base: 0x0A00_1000,
                size: 0x1000,
                spi: 17,
            },
        ],
        ..config()
    })
    .unwrap();
    let fdt = Fdt::new(&dtb).unwrap();
    for (path, base, spi) in [
        ("/virtio_mmio@a000000", 0x0A00_0000u64, 16u32),
        ("/virtio_mmio@a001000", 0x0A00_1000, 17),
    ] {
        let device = node(&fdt, path);
        assert_eq!(string_list(device, "compatible"), ["virtio,mmio"]);
        assert_eq!(u64s(device, "reg"), [base, 0x1000]);
        assert_eq!(cells(device, "interrupts"), [0, spi, 1]);
        assert!(has(device, "dma-coherent"));
    }
    assert!(
        create_fdt(&config())
            .map(|dtb| !String::from_utf8_lossy(&dtb).contains("virtio,mmio"))
            .unwrap()
    );
}
