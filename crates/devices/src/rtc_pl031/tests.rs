use std::sync::Mutex;

use super::*;
use crate::amba::ID_START;
use crate::test_utils::{ManualClock, RecordingIrqLine};

/// An arbitrary wall-clock start, in the middle of a second to catch rounding.
const START: Duration = Duration::from_millis(1_700_000_000_250);

/// Shares what the device asked of its timer with the test.
#[derive(Clone, Default)]
struct FakeTimer {
    armed: Arc<Mutex<Option<Duration>>>,
}

impl FakeTimer {
    fn armed(&self) -> Option<Duration> {
        *self.armed.lock().unwrap()
    }
}

impl AlarmTimer for FakeTimer {
    fn arm(&mut self, after: Duration) -> io::Result<()> {
        *self.armed.lock().unwrap() = Some(after);
        Ok(())
    }
    fn disarm(&mut self) -> io::Result<()> {
        *self.armed.lock().unwrap() = None;
        Ok(())
    }
    fn acknowledge(&mut self) -> io::Result<()> {
        *self.armed.lock().unwrap() = None;
        Ok(())
    }
}

struct Rig {
    rtc: Pl031Rtc<ManualClock, FakeTimer>,
    clock: ManualClock,
    timer: FakeTimer,
    irq: Arc<RecordingIrqLine>,
}

impl Rig {
    fn new() -> Self {
        let clock = ManualClock::new(START);
        let timer = FakeTimer::default();
        let irq = Arc::new(RecordingIrqLine::new());
        let rtc = Pl031Rtc::new(irq.clone(), clock.clone(), timer.clone());
        Self {
            rtc,
            clock,
            timer,
            irq,
        }
    }

    fn read(&mut self, offset: u64) -> u32 {
        let mut data = [0xff; 4];
        self.rtc.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write(&mut self, offset: u64, value: u32) {
        self.rtc.write(offset, &value.to_le_bytes());
    }

    /// The host time passes and the event loop reacts to the timer as epoll would.
    fn pass(&mut self, by: Duration) {
        self.clock.advance(by);
        if let Some(after) = self.timer.armed() {
            if by >= after {
                self.rtc.on_alarm_timer().unwrap();
            } else {
                *self.timer.armed.lock().unwrap() = Some(after - by);
            }
        }
    }

    /// What Linux's `pl031_set_alarm` does: MR, then clear and enable the interrupt.
    fn linux_set_alarm(&mut self, at: u32) {
        self.write(RTCMR, at);
        self.write(RTCICR, ALARM_BIT);
        let imsc = self.read(RTCIMSC);
        self.write(RTCIMSC, imsc | ALARM_BIT);
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn identifies_as_pl031_to_the_amba_bus() {
    let mut rig = Rig::new();
    let byte = |rig: &mut Rig, i: u64| rig.read(ID_START + 4 * i) & 0xff;
    let periph_id = (0..4).fold(0, |id, i| id | byte(&mut rig, i) << (8 * i));
    let cell_id = (4..8).fold(0, |id, i| id | byte(&mut rig, i) << (8 * (i - 4)));
    assert_eq!(periph_id & 0x000f_ffff, 0x0004_1031);
    assert_eq!(cell_id, 0xb105_f00d);
}

#[test]
fn counter_follows_the_wall_clock_and_loads_from_lr() {
    let mut rig = Rig::new();
    assert_eq!(u64::from(rig.read(RTCDR)), START.as_secs());

    rig.write(RTCLR, 1000);
    assert_eq!(rig.read(RTCDR), 1000);
    assert_eq!(rig.read(RTCLR), 1000);
    rig.clock.advance(Duration::from_millis(750)); // crosses a host second
    assert_eq!(rig.read(RTCDR), 1001);
    rig.clock.advance(secs(10));
    assert_eq!(rig.read(RTCDR), 1011);
}

#[test]
fn control_reads_started_and_writing_it_keeps_the_time() {
    let mut rig = Rig::new();
    rig.write(RTCLR, 5000);
    assert_eq!(rig.read(RTCCR) & 1, 1);
    // Linux's probe does CR |= EN; some drivers write 0.
    rig.write(RTCCR, 1);
    rig.write(RTCCR, 0);
    assert_eq!(rig.read(RTCDR), 5000);
    assert_eq!(rig.read(RTCCR) & 1, 1);
}

#[test]
fn linux_alarm_flow_raises_and_clears_the_line() {
    let mut rig = Rig::new();
    rig.write(RTCLR, 1_000_000);
    rig.linux_set_alarm(1_000_005);
    assert_eq!(rig.read(RTCRIS), 0);
    assert!(!rig.irq.is_high());
    // The host timer is asked for the start of second 1_000_005, 4.75 s away.
    assert_eq!(rig.timer.armed(), Some(Duration::from_millis(4750)));

    rig.pass(secs(4));
    assert_eq!(rig.read(RTCRIS), 0, "one second early");
    rig.pass(secs(1));
    assert_eq!(rig.read(RTCDR), 1_000_005);
    assert_eq!(rig.read(RTCRIS), ALARM_BIT);
    assert_eq!(rig.read(RTCMIS), ALARM_BIT);
    assert!(rig.irq.is_high());

    // pl031_interrupt: read MIS, write it to ICR.
    let mis = rig.read(RTCMIS);
    rig.write(RTCICR, mis);
    assert_eq!(rig.read(RTCRIS), 0);
    assert_eq!(rig.read(RTCMIS), 0);
    assert!(!rig.irq.is_high());
    assert_eq!(rig.irq.rising_edges(), 1);
}

#[test]
fn line_stays_high_until_cleared() {
    let mut rig = Rig::new();
    let now = rig.read(RTCDR);
    rig.linux_set_alarm(now + 1);
    rig.pass(secs(1));
    assert!(rig.irq.is_high());
    rig.pass(secs(100));
    rig.read(RTCDR);
    assert!(rig.irq.is_high());
    assert_eq!(rig.irq.rising_edges(), 1, "level, not re-pulsed");
}

#[test]
fn masked_match_sets_raw_status_and_unmasking_raises_the_line() {
    let mut rig = Rig::new();
    let now = rig.read(RTCDR);
    rig.write(RTCMR, now + 2);
    rig.pass(secs(2));
    assert_eq!(rig.read(RTCRIS), ALARM_BIT);
    assert_eq!(rig.read(RTCMIS), 0);
    assert!(!rig.irq.is_high());

    rig.write(RTCIMSC, ALARM_BIT);
    assert!(rig.irq.is_high());
    rig.write(RTCIMSC, 0);
    assert!(!rig.irq.is_high(), "masking deasserts");
    assert_eq!(rig.read(RTCRIS), ALARM_BIT, "masking does not clear RIS");
}

#[test]
fn match_in_the_past_waits_for_the_counter_to_wrap() {
    let mut rig = Rig::new();
    rig.write(RTCLR, 1000);
    rig.write(RTCIMSC, ALARM_BIT);
    rig.write(RTCMR, 990);
    assert_eq!(rig.read(RTCRIS), 0);
    assert_eq!(
        rig.timer.armed().map(|d| d.as_secs()),
        Some((1u64 << 32) - 10 - 1),
        "next equality is after the wrap"
    );
    rig.pass(secs(365 * 24 * 3600));
    assert_eq!(rig.read(RTCRIS), 0);
    assert!(!rig.irq.is_high());
}

#[test]
fn match_equal_to_the_counter_fires_at_once() {
    let mut rig = Rig::new();
    rig.write(RTCIMSC, ALARM_BIT);
    let now = rig.read(RTCDR);
    rig.write(RTCMR, now);
    assert_eq!(rig.read(RTCRIS), ALARM_BIT);
    assert!(rig.irq.is_high());
    assert_eq!(rig.timer.armed(), None);
}

#[test]
fn match_fires_once() {
    let mut rig = Rig::new();
    let now = rig.read(RTCDR);
    rig.linux_set_alarm(now + 3);
    rig.pass(secs(3));
    rig.write(RTCICR, ALARM_BIT);
    rig.pass(secs(3600));
    assert_eq!(rig.read(RTCRIS), 0);
    assert_eq!(rig.irq.rising_edges(), 1);
}

#[test]
fn loading_the_counter_reschedules_the_match() {
    let mut rig = Rig::new();
    rig.write(RTCLR, 100);
    rig.linux_set_alarm(110);
    rig.write(RTCLR, 108);
    assert_eq!(rig.timer.armed().map(|d| d.as_secs_f64()), Some(1.75));
    rig.pass(secs(2));
    assert_eq!(rig.read(RTCRIS), ALARM_BIT);

    rig.write(RTCICR, ALARM_BIT);
    rig.linux_set_alarm(200);
    rig.write(RTCLR, 200); // setting the time onto MR is a match
    assert_eq!(rig.read(RTCRIS), ALARM_BIT);
}

#[test]
fn rewriting_match_moves_the_alarm() {
    let mut rig = Rig::new();
    rig.write(RTCLR, 0);
    rig.linux_set_alarm(10);
    rig.linux_set_alarm(20);
    rig.pass(secs(10));
    assert_eq!(rig.read(RTCRIS), 0);
    rig.pass(secs(10));
    assert_eq!(rig.read(RTCRIS), ALARM_BIT);
}

#[test]
fn guest_poll_sees_a_due_match_before_the_timer_event() {
    let mut rig = Rig::new();
    let now = rig.read(RTCDR);
    rig.linux_set_alarm(now + 5);
    rig.clock.advance(secs(5)); // the event loop has not run yet
    assert_eq!(rig.read(RTCRIS), ALARM_BIT);
    assert!(rig.irq.is_high());
    rig.rtc.on_alarm_timer().unwrap(); // the late timer event is harmless
    assert_eq!(rig.irq.rising_edges(), 1);
}

#[test]
fn early_timer_rearms_for_the_remainder() {
    let mut rig = Rig::new();
    rig.write(RTCLR, 0);
    rig.linux_set_alarm(60);
    rig.clock.advance(secs(30));
    rig.rtc.on_alarm_timer().unwrap();
    assert_eq!(rig.read(RTCRIS), 0);
    assert_eq!(rig.timer.armed(), Some(Duration::from_millis(29_750)));
}

#[test]
fn clock_stepping_past_the_match_fires_it() {
    let mut rig = Rig::new();
    rig.write(RTCLR, 0);
    rig.linux_set_alarm(60);
    rig.clock.advance(secs(3600));
    rig.rtc.on_alarm_timer().unwrap();
    assert_eq!(rig.read(RTCRIS), ALARM_BIT);
    assert!(rig.irq.is_high());
}

#[test]
fn only_aligned_word_accesses_are_honoured() {
    let mut rig = Rig::new();
    rig.write(RTCMR, 0x1234_5678);

    let mut byte = [0xff; 1];
    rig.rtc.read(RTCMR, &mut byte);
    assert_eq!(byte, [0]);
    let mut wide = [0xff; 8];
    rig.rtc.read(RTCMR, &mut wide);
    assert_eq!(wide, [0; 8]);
    assert_eq!(rig.read(RTCMR + 1), 0);

    rig.rtc.write(RTCMR, &[0]);
    rig.rtc.write(RTCMR + 2, &[0; 4]);
    assert_eq!(rig.read(RTCMR), 0x1234_5678);
}

#[test]
fn read_only_and_reserved_registers_ignore_writes() {
    let mut rig = Rig::new();
    rig.write(RTCLR, 77);
    rig.write(RTCDR, 5);
    rig.write(RTCRIS, 1);
    rig.write(RTCMIS, 1);
    rig.write(0x800, 1);
    rig.write(ID_START, 0);
    assert_eq!(rig.read(RTCDR), 77);
    assert_eq!(rig.read(RTCRIS), 0);
    assert_eq!(rig.read(ID_START), 0x31);
    assert_eq!(rig.read(RTCICR), 0);
    assert_eq!(rig.read(0x800), 0);
}

/// The registers as the guest reads them.
fn guest_view(rig: &mut Rig) -> Vec<u32> {
    [RTCDR, RTCMR, RTCLR, RTCCR, RTCIMSC, RTCRIS, RTCMIS]
        .iter()
        .map(|&offset| rig.read(offset))
        .collect()
}

impl Rig {
    /// A fresh device on the same clock, restored from `state` after a trip through JSON.
    fn restored(&self, state: &RtcState) -> Self {
        let state = crate::test_utils::through_json(state);
        let timer = FakeTimer::default();
        let irq = Arc::new(RecordingIrqLine::new());
        let rtc =
            Pl031Rtc::from_state(&state, irq.clone(), self.clock.clone(), timer.clone()).unwrap();
        Self {
            rtc,
            clock: self.clock.clone(),
            timer,
            irq,
        }
    }
}

#[test]
fn restored_alarm_is_still_armed_and_fires_at_its_time() {
    let mut rig = Rig::new();
    rig.write(RTCLR, 0);
    rig.linux_set_alarm(60);
    rig.pass(secs(10));
    let state = rig.rtc.state();
    assert_eq!(state.alarm_at.map(|at| at - START.as_secs()), Some(60));

    let mut restored = rig.restored(&state);
    assert_eq!(guest_view(&mut restored), guest_view(&mut rig));
    assert_eq!(restored.timer.armed(), Some(Duration::from_millis(49_750)));
    assert_eq!(restored.irq.levels(), vec![false]);

    restored.pass(secs(49));
    assert_eq!(restored.read(RTCRIS), 0, "one second early");
    restored.pass(secs(1));
    assert_eq!(restored.read(RTCDR), 60);
    assert_eq!(restored.read(RTCMIS), ALARM_BIT);
    assert!(restored.irq.is_high());
    restored.write(RTCICR, ALARM_BIT);
    assert!(!restored.irq.is_high());
}

#[test]
fn restored_alarm_that_fell_due_while_saved_fires_at_once() {
    let mut rig = Rig::new();
    rig.write(RTCLR, 0);
    rig.linux_set_alarm(60);
    let state = rig.rtc.state();

    rig.clock.advance(secs(3600)); // the VM stayed on disk for an hour
    let mut restored = rig.restored(&state);
    assert!(
        restored.irq.is_high(),
        "raised before the first guest access"
    );
    assert_eq!(restored.timer.armed(), None, "nothing left to wait for");
    assert_eq!(restored.read(RTCRIS), ALARM_BIT);
    assert_eq!(restored.read(RTCMIS), ALARM_BIT);
    assert_eq!(restored.read(RTCDR), 3600, "time kept running");
    assert_eq!(restored.rtc.state().alarm_at, None);
    assert_eq!(restored.irq.rising_edges(), 1);
}

#[test]
fn restored_masked_alarm_due_while_saved_sets_raw_status_only() {
    let mut rig = Rig::new();
    rig.write(RTCLR, 0);
    rig.write(RTCMR, 60);
    let state = rig.rtc.state();
    rig.clock.advance(secs(61));
    let mut restored = rig.restored(&state);
    assert_eq!(restored.read(RTCRIS), ALARM_BIT);
    assert!(!restored.irq.is_high());
    restored.write(RTCIMSC, ALARM_BIT);
    assert!(restored.irq.is_high());
}

#[test]
fn restored_raised_alarm_keeps_the_line_high_until_cleared() {
    let mut rig = Rig::new();
    let now = rig.read(RTCDR);
    rig.linux_set_alarm(now + 1);
    rig.pass(secs(1));
    assert!(rig.irq.is_high());

    let mut restored = rig.restored(&rig.rtc.state());
    assert!(restored.irq.is_high());
    assert_eq!(guest_view(&mut restored), guest_view(&mut rig));
    let mis = restored.read(RTCMIS);
    restored.write(RTCICR, mis);
    assert!(!restored.irq.is_high());
}

#[test]
fn restored_idle_rtc_reads_like_the_saved_one() {
    let mut rig = Rig::new();
    rig.write(RTCLR, 12345);
    let mut restored = rig.restored(&rig.rtc.state());
    assert_eq!(guest_view(&mut restored), guest_view(&mut rig));
    // MR is 0, behind the counter: the match waits for the wrap, there as here.
    assert_eq!(restored.timer.armed(), rig.timer.armed());
    assert!(restored.irq.levels().iter().all(|&level| !level));
}

fn restore_error(state: RtcState) -> RtcStateError {
    match Pl031Rtc::from_state(
        &state,
        Arc::new(RecordingIrqLine::new()),
        ManualClock::new(START),
        FakeTimer::default(),
    ) {
        Ok(_) => panic!("{state:?} was accepted"),
        Err(err) => err,
    }
}

#[test]
fn a_mask_with_bits_besides_the_alarm_is_rejected() {
    let err = restore_error(RtcState {
        imsc: 0x3,
        ..RtcState::default()
    });
    assert!(
        matches!(err, RtcStateError::InvalidInterruptMask(3)),
        "{err}"
    );
}

#[test]
fn a_raw_status_with_bits_besides_the_alarm_is_rejected() {
    let err = restore_error(RtcState {
        ris: 0x2,
        ..RtcState::default()
    });
    assert!(matches!(err, RtcStateError::InvalidRawStatus(2)), "{err}");
}

#[test]
fn an_alarm_not_due_when_the_counter_reaches_mr_is_rejected() {
    let err = restore_error(RtcState {
        offset: -1000,
        mr: 60,
        alarm_at: Some(1061),
        ..RtcState::default()
    });
    assert!(
        matches!(err, RtcStateError::InvalidAlarm { at: 1061, mr: 60 }),
        "{err}"
    );
    // The consistent one is accepted.
    Pl031Rtc::from_state(
        &RtcState {
            offset: -1000,
            mr: 60,
            alarm_at: Some(1060),
            ..RtcState::default()
        },
        Arc::new(RecordingIrqLine::new()),
        ManualClock::new(START),
        FakeTimer::default(),
    )
    .unwrap();
}

#[test]
fn failing_line_is_reported_and_retried() {
    let mut rig = Rig::new();
    rig.write(RTCIMSC, ALARM_BIT);
    let now = rig.read(RTCDR);
    rig.write(RTCMR, now + 1);
    rig.irq.set_failing(true);
    rig.clock.advance(secs(1));
    assert!(matches!(rig.rtc.on_alarm_timer(), Err(RtcError::Irq(_))));
    rig.read(RTCDR); // a failing line must not panic the MMIO path

    rig.irq.set_failing(false);
    rig.write(RTCIMSC, ALARM_BIT); // any update retries the unknown level
    assert!(rig.irq.is_high());
}

#[test]
fn timerfd_alarm_is_pollable_and_never_blocks() {
    let mut timer = TimerFdAlarm::new().unwrap();
    assert!(timer.as_raw_fd() >= 0);
    timer.acknowledge().unwrap(); // nothing expired: must return, not block
    timer.arm(secs(3600)).unwrap();
    timer.acknowledge().unwrap();
    timer.arm(Duration::ZERO).unwrap(); // must not turn into a disarm
    timer.disarm().unwrap();
    timer.acknowledge().unwrap();
}
