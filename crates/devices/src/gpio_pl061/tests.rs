use super::*;
use crate::amba::ID_START;
use crate::test_utils::RecordingIrqLine;

const KEY_PIN: u32 = 3;
const KEY_BIT: u8 = 1 << KEY_PIN;

fn gpio() -> (Pl061Gpio, Arc<RecordingIrqLine>) {
    let irq = Arc::new(RecordingIrqLine::new());
    (Pl061Gpio::new(irq.clone()), irq)
}

fn readb(gpio: &mut Pl061Gpio, offset: u64) -> u8 {
    let mut data = [0xff];
    gpio.read(offset, &mut data);
    data[0]
}

fn writeb(gpio: &mut Pl061Gpio, offset: u64, value: u8) {
    gpio.write(offset, &[value]);
}

fn readl(gpio: &mut Pl061Gpio, offset: u64) -> u32 {
    let mut data = [0xff; 4];
    gpio.read(offset, &mut data);
    u32::from_le_bytes(data)
}

/// Linux `pl061_get_value`: `readb(base + BIT(offset + 2))`.
fn get_value(gpio: &mut Pl061Gpio, pin: u32) -> bool {
    readb(gpio, 1 << (pin + 2)) != 0
}

/// What gpio-keys makes the Linux driver do for an IRQ_TYPE_EDGE_BOTH button.
fn linux_request_both_edges(gpio: &mut Pl061Gpio, bit: u8) {
    let dir = readb(gpio, GPIODIR);
    writeb(gpio, GPIODIR, dir & !bit);
    let is = readb(gpio, GPIOIS);
    writeb(gpio, GPIOIS, is & !bit);
    let ibe = readb(gpio, GPIOIBE);
    writeb(gpio, GPIOIBE, ibe | bit);
    let ie = readb(gpio, GPIOIE);
    writeb(gpio, GPIOIE, ie | bit);
}

/// Linux `pl061_irq_handler` plus `handle_edge_irq`'s ack: returns the pending pins.
fn linux_handle_irq(gpio: &mut Pl061Gpio) -> u8 {
    let pending = readb(gpio, GPIOMIS);
    for pin in 0..PL061_PIN_COUNT {
        if pending & (1 << pin) != 0 {
            writeb(gpio, GPIOIC, 1 << pin);
        }
    }
    pending
}

#[test]
fn identifies_as_pl061_to_the_amba_bus() {
    let (mut gpio, _) = gpio();
    let byte = |gpio: &mut Pl061Gpio, i: u64| readl(gpio, ID_START + 4 * i) & 0xff;
    let periph_id = (0..4).fold(0, |id, i| id | byte(&mut gpio, i) << (8 * i));
    let cell_id = (4..8).fold(0, |id, i| id | byte(&mut gpio, i) << (8 * (i - 4)));
    assert_eq!(periph_id & 0x000f_ffff, 0x0004_1061);
    assert_eq!(cell_id, 0xb105_f00d);
}

#[test]
fn gpio_keys_press_and_release_each_interrupt() {
    let (mut gpio, irq) = gpio();
    linux_request_both_edges(&mut gpio, KEY_BIT);
    assert!(!irq.is_high());

    gpio.press(KEY_PIN).unwrap();
    assert!(irq.is_high(), "press wakes");
    assert_eq!(linux_handle_irq(&mut gpio), KEY_BIT);
    assert!(!irq.is_high(), "GPIOIC deasserts");
    assert!(get_value(&mut gpio, KEY_PIN), "key reads pressed");

    gpio.release(KEY_PIN).unwrap();
    assert!(irq.is_high(), "release interrupts too");
    assert_eq!(linux_handle_irq(&mut gpio), KEY_BIT);
    assert!(!get_value(&mut gpio, KEY_PIN));

    // A second press must be a new edge (Cloud Hypervisor's model never releases).
    gpio.press(KEY_PIN).unwrap();
    assert!(irq.is_high());
    assert_eq!(irq.rising_edges(), 3);
}

#[test]
fn rising_edge_only_ignores_release() {
    let (mut gpio, irq) = gpio();
    writeb(&mut gpio, GPIOIEV, KEY_BIT);
    writeb(&mut gpio, GPIOIE, KEY_BIT);
    gpio.press(KEY_PIN).unwrap();
    assert_eq!(linux_handle_irq(&mut gpio), KEY_BIT);
    gpio.release(KEY_PIN).unwrap();
    assert_eq!(readb(&mut gpio, GPIORIS), 0);
    assert!(!irq.is_high());
}

#[test]
fn falling_edge_only_ignores_press() {
    let (mut gpio, _) = gpio();
    writeb(&mut gpio, GPIOIE, KEY_BIT); // IEV = 0: falling
    gpio.press(KEY_PIN).unwrap();
    assert_eq!(readb(&mut gpio, GPIORIS), 0);
    gpio.release(KEY_PIN).unwrap();
    assert_eq!(readb(&mut gpio, GPIORIS), KEY_BIT);
}

#[test]
fn masked_edge_is_latched_and_raised_on_unmask() {
    let (mut gpio, irq) = gpio();
    writeb(&mut gpio, GPIOIBE, KEY_BIT);
    gpio.press(KEY_PIN).unwrap();
    assert_eq!(readb(&mut gpio, GPIORIS), KEY_BIT);
    assert_eq!(readb(&mut gpio, GPIOMIS), 0);
    assert!(!irq.is_high());
    writeb(&mut gpio, GPIOIE, KEY_BIT);
    assert!(irq.is_high());
    writeb(&mut gpio, GPIOIE, 0);
    assert!(!irq.is_high(), "masking deasserts");
}

#[test]
fn level_interrupt_holds_until_the_level_goes() {
    let (mut gpio, irq) = gpio();
    writeb(&mut gpio, GPIOIS, KEY_BIT);
    writeb(&mut gpio, GPIOIEV, KEY_BIT); // high level
    writeb(&mut gpio, GPIOIE, KEY_BIT);
    assert!(!irq.is_high());

    gpio.press(KEY_PIN).unwrap();
    assert!(irq.is_high());
    writeb(&mut gpio, GPIOIC, KEY_BIT);
    assert_eq!(
        readb(&mut gpio, GPIOMIS),
        KEY_BIT,
        "IC does not clear a level"
    );
    assert!(irq.is_high());

    gpio.release(KEY_PIN).unwrap();
    assert_eq!(readb(&mut gpio, GPIORIS), 0);
    assert!(!irq.is_high());
}

#[test]
fn low_level_interrupt_is_active_while_low() {
    let (mut gpio, irq) = gpio();
    gpio.press(KEY_PIN).unwrap();
    writeb(&mut gpio, GPIOIS, KEY_BIT); // IEV = 0: low level
    writeb(&mut gpio, GPIOIE, KEY_BIT);
    assert!(!irq.is_high());
    gpio.release(KEY_PIN).unwrap();
    assert!(irq.is_high());
}

#[test]
fn data_address_bits_mask_reads_and_writes() {
    let (mut gpio, _) = gpio();
    writeb(&mut gpio, GPIODIR, 0x0f); // pins 0-3 outputs, 4-7 inputs
    gpio.set_input(6, true).unwrap();

    // Write all ones through a mask selecting pins 1 and 5: only output pin 1 changes.
    writeb(&mut gpio, ((1 << 1) | (1 << 5)) << 2, 0xff);
    assert_eq!(readb(&mut gpio, 0x3fc), (1 << 1) | (1 << 6));
    // A read sees only the addressed pins.
    assert_eq!(readb(&mut gpio, (1 << 6) << 2), 1 << 6);
    assert_eq!(readb(&mut gpio, (1 << 1) << 2), 1 << 1);
    assert_eq!(readb(&mut gpio, 0), 0);
    // A write through mask 0 changes nothing.
    writeb(&mut gpio, 0, 0);
    assert_eq!(readb(&mut gpio, 0x3fc), (1 << 1) | (1 << 6));
}

#[test]
fn linux_direction_output_sets_the_level() {
    let (mut gpio, _) = gpio();
    // pl061_direction_output(pin 2, 1): value, DIR, value again.
    writeb(&mut gpio, 1 << 4, 1 << 2);
    let dir = readb(&mut gpio, GPIODIR);
    writeb(&mut gpio, GPIODIR, dir | 1 << 2);
    writeb(&mut gpio, 1 << 4, 1 << 2);
    assert!(get_value(&mut gpio, 2));
}

#[test]
fn host_input_on_an_output_pin_waits_for_input_mode() {
    let (mut gpio, _) = gpio();
    writeb(&mut gpio, GPIODIR, KEY_BIT);
    gpio.press(KEY_PIN).unwrap();
    assert!(!get_value(&mut gpio, KEY_PIN));
    writeb(&mut gpio, GPIODIR, 0);
    assert!(get_value(&mut gpio, KEY_PIN));
}

#[test]
fn invalid_pin_is_an_error() {
    let (mut gpio, _) = gpio();
    assert!(matches!(
        gpio.press(PL061_PIN_COUNT),
        Err(GpioError::InvalidPin { pin: 8 })
    ));
    assert!(gpio.set_input(u32::MAX, true).is_err());
}

#[test]
fn word_and_byte_accesses_agree_and_odd_ones_are_ignored() {
    let (mut gpio, _) = gpio();
    gpio.write(GPIOIE, &0x0000_00a5u32.to_le_bytes());
    assert_eq!(readb(&mut gpio, GPIOIE), 0xa5);
    assert_eq!(readl(&mut gpio, GPIOIE), 0xa5);
    assert_eq!(readb(&mut gpio, GPIOIE + 1), 0, "upper lanes are reserved");

    writeb(&mut gpio, GPIOIE + 1, 0xff);
    gpio.write(GPIOIE, &[0xff; 8]);
    gpio.write(GPIOIE + 2, &[0xff; 4]);
    gpio.write(GPIOIE, &[0xff; 3]);
    assert_eq!(readb(&mut gpio, GPIOIE), 0xa5);

    let mut wide = [0xff; 8];
    gpio.read(GPIOIE, &mut wide);
    assert_eq!(wide, [0; 8]);
}

#[test]
fn reserved_and_read_only_registers_ignore_writes() {
    let (mut gpio, _) = gpio();
    writeb(&mut gpio, GPIOIBE, KEY_BIT);
    gpio.press(KEY_PIN).unwrap();
    writeb(&mut gpio, GPIORIS, 0);
    writeb(&mut gpio, GPIOMIS, 0);
    writeb(&mut gpio, 0x800, 0xff);
    writeb(&mut gpio, ID_START, 0);
    assert_eq!(readb(&mut gpio, GPIORIS), KEY_BIT);
    assert_eq!(readb(&mut gpio, GPIOIC), 0);
    assert_eq!(readb(&mut gpio, 0x800), 0);
    assert_eq!(readb(&mut gpio, ID_START), 0x61);
}

/// Every register as the guest reads it, and the level of each pin.
fn guest_view(gpio: &mut Pl061Gpio) -> Vec<u8> {
    let mut view: Vec<u8> = [
        GPIODIR, GPIOIS, GPIOIBE, GPIOIEV, GPIOIE, GPIORIS, GPIOMIS, GPIOAFSEL,
    ]
    .iter()
    .map(|&offset| readb(gpio, offset))
    .collect();
    view.push(readb(gpio, GPIODATA_END));
    view
}

fn restored(gpio: &Pl061Gpio) -> (Pl061Gpio, Arc<RecordingIrqLine>) {
    let state = crate::test_utils::through_json(&gpio.state());
    let irq = Arc::new(RecordingIrqLine::new());
    (Pl061Gpio::from_state(&state, irq.clone()).unwrap(), irq)
}

#[test]
fn restored_press_is_still_pending_and_the_button_keeps_working() {
    let (mut gpio, _) = gpio();
    linux_request_both_edges(&mut gpio, KEY_BIT);
    gpio.press(KEY_PIN).unwrap();

    let (mut restored, irq) = restored(&gpio);
    assert_eq!(guest_view(&mut restored), guest_view(&mut gpio));
    assert!(irq.is_high(), "pending press survives restore");
    assert_eq!(linux_handle_irq(&mut restored), KEY_BIT);
    assert!(!irq.is_high());
    assert!(get_value(&mut restored, KEY_PIN), "the key is still held");
    restored.release(KEY_PIN).unwrap();
    assert!(irq.is_high(), "release is an edge too");
}

#[test]
fn restored_outputs_levels_and_masked_edges_read_back_equal() {
    let (mut gpio, _) = gpio();
    // Pin 0 an output driven high, pin 5 a high-level interrupt, pin 6 a masked rising edge.
    writeb(&mut gpio, GPIODIR, 0x01);
    writeb(&mut gpio, 0x01 << 2, 0x01);
    writeb(&mut gpio, GPIOIS, 0x20);
    writeb(&mut gpio, GPIOIEV, 0x60);
    writeb(&mut gpio, GPIOIE, 0x20);
    writeb(&mut gpio, GPIOAFSEL, 0x80);
    gpio.press(5).unwrap();
    gpio.press(6).unwrap();

    let (mut restored, irq) = restored(&gpio);
    assert_eq!(guest_view(&mut restored), guest_view(&mut gpio));
    assert!(irq.is_high(), "the level interrupt holds");
    assert_eq!(readb(&mut restored, GPIORIS), 0x60);
    gpio.release(5).unwrap();
    restored.release(5).unwrap();
    assert!(!irq.is_high());
    writeb(&mut restored, GPIOIE, 0x40);
    assert!(irq.is_high(), "the latched edge was kept");
    writeb(&mut restored, GPIOIC, 0x40);
    assert!(!irq.is_high());
}

#[test]
fn failing_line_is_reported_and_retried() {
    let (mut gpio, irq) = gpio();
    linux_request_both_edges(&mut gpio, KEY_BIT);
    irq.set_failing(true);
    assert!(matches!(gpio.press(KEY_PIN), Err(GpioError::Irq(_))));
    writeb(&mut gpio, GPIOIC, KEY_BIT); // must not panic
    irq.set_failing(false);
    gpio.release(KEY_PIN).unwrap();
    assert!(irq.is_high());
}
