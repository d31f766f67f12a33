//! Guest devices. They raise interrupts through a small trait and never depend on KVM.
//!
//! The PL031 alarm, a gpio-keys button on the PL061 and serial input are the guest's
//! wakeup sources for suspend-to-RAM.

mod amba;
pub mod boot_timer;
pub mod bus;
pub mod gpio_pl061;
pub mod irq;
pub mod log_limit;
pub mod rtc_pl031;
pub mod serial;
#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;
pub mod virtio;

pub use boot_timer::{BOOT_TIMER_MAGIC, BootTimer, BootTimerState};
pub use bus::{BusError, MmioBus, MmioDevice, SharedMmioDevice};
pub use gpio_pl061::{GpioError, GpioState, GpioStateError, Pl061Gpio};
pub use irq::{IrqError, IrqLine, IrqLineTrigger};
pub use rtc_pl031::{
    AlarmTimer, Clock, Pl031Rtc, RtcError, RtcState, RtcStateError, SystemClock, TimerFdAlarm,
};
pub use serial::{Serial16550, SerialOutput, SerialState, SerialStateError};
