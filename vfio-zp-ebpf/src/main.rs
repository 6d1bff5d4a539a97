//! vfio-zp kernel probes. Each probe records what the kernel did and nothing
//! more: no policy, no model. Exact totals go to `COUNTERS`, per-call detail to
//! the `EVENTS` ring buffer; a full ring buffer costs detail, never totals.
#![no_std]
#![no_main]

mod gup;
mod lifecycle;
mod shared;
mod thread;
mod type1;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
