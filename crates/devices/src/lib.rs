//! Guest devices. They raise interrupts through a small trait and never depend on KVM.
