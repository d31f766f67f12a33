//! The PSCI SYSTEM_SUSPEND rules in `arch_aarch64::psci`: `SystemSuspendCall::decode` on the
//! guest's x0-x2, `validate_system_suspend` against RAM ranges and a count of vCPUs still on,
//! `ResumeState::for_call`, and the return codes' x0 encoding.
//!
//! Input: u64 x0, x1, x2 (SYSTEM_SUSPEND_64, 0x4000_0000 and 0 when the input is shorter),
//! a byte of other vCPUs on, a byte of RAM ranges (0 to 3) and each range's u64 start and
//! size.
//!
//! Checks: only the SYSTEM_SUSPEND ids decode, SMC32 keeps the low 32 bits; an accepted call
//! has no other vCPU on and a 4-byte aligned entry inside some range; a denial maps to DENIED
//! or INVALID_ADDRESS; every return code round-trips through x0.

use arch_aarch64::layout::GuestRegion;
use arch_aarch64::psci::{
    CallWidth, PsciReturn, ResumeState, SYSTEM_SUSPEND_32, SYSTEM_SUSPEND_64, SuspendDenial,
    SystemSuspendCall, validate_system_suspend,
};

use crate::Input;

/// Decodes and validates the call in `data`.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let x0 = input.u64().unwrap_or(u64::from(SYSTEM_SUSPEND_64));
    let x1 = input.u64().unwrap_or(0x4000_0000);
    let x2 = input.u64().unwrap_or(0);
    let others = usize::from(input.u8().unwrap_or(0));
    let ram: Vec<GuestRegion> = (0..input.u8().unwrap_or(1) % 4)
        .map_while(|_| {
            Some(GuestRegion {
                start: input.u64()?,
                size: input.u64()?,
            })
        })
        .collect();

    if let Some(code) = PsciReturn::from_x0(x0) {
        assert_eq!(PsciReturn::from_x0(code.to_x0()), Some(code));
        assert_eq!(code.to_x0() as u32, x0 as u32);
    }

    let Some(call) = SystemSuspendCall::decode(x0, x1, x2) else {
        assert!(![SYSTEM_SUSPEND_32, SYSTEM_SUSPEND_64].contains(&(x0 as u32)));
        return;
    };
    match call.width {
        CallWidth::Smc32 => {
            assert_eq!(x0 as u32, SYSTEM_SUSPEND_32);
            assert_eq!(
                (call.entry, call.context_id),
                (x1 & 0xFFFF_FFFF, x2 & 0xFFFF_FFFF)
            );
        }
        CallWidth::Smc64 => {
            assert_eq!(x0 as u32, SYSTEM_SUSPEND_64);
            assert_eq!((call.entry, call.context_id), (x1, x2));
        }
    }
    match validate_system_suspend(&call, &ram, others) {
        Ok(()) => {
            assert_eq!(others, 0);
            assert_eq!(call.entry % 4, 0);
            assert!(ram.iter().any(|range| {
                call.entry >= range.start && call.entry - range.start < range.size
            }));
            let resume = ResumeState::for_call(&call);
            assert_eq!((resume.pc, resume.x0), (call.entry, call.context_id));
        }
        Err(denial) => {
            let code = denial.psci_return();
            match denial {
                SuspendDenial::OtherCpusOn { count } => {
                    assert_eq!(count, others);
                    assert_eq!(code, PsciReturn::Denied);
                }
                SuspendDenial::InvalidEntry { entry } => {
                    assert_eq!(others, 0);
                    assert_eq!(entry, call.entry);
                    assert_eq!(code, PsciReturn::InvalidAddress);
                }
            }
            assert_eq!(PsciReturn::from_x0(code.to_x0()), Some(code));
        }
    }
}
