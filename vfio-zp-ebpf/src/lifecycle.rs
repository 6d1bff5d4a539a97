//! Container and mapping lifetimes.
use aya_ebpf::{
    macros::{kprobe, kretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use aya_log_ebpf::warn;
use vfio_zp_common::{
    ProbeId,
    payload::{Container, RemoveDma},
};

use crate::{
    shared::{Record, ZeroIds, hit},
    thread::{Removal, emit, thread},
    type1::VFIO_IOMMU_UNMAP_DMA,
};

/// vfio_iommu_type1_open(arg) returns the container (or an ERR_PTR).
#[kretprobe]
pub fn type1_open_ret(ctx: RetProbeContext) -> u32 {
    hit(ProbeId::Type1Open);
    let ret: u64 = ctx.ret();
    // ERR_PTR values sit in the top 4095 addresses.
    let container = if ret >= (-4095i64) as u64 { 0 } else { ret };
    if container == 0 {
        // Rare and worth a line in the agent's log (forwarded by aya-log).
        warn!(&ctx, "vfio_iommu_type1_open failed: {}", ret as i64);
    }
    let open = Container { container };
    emit(
        thread(),
        Record::new(ProbeId::Type1Open, 0, &open).container(container),
    );
    0
}

/// vfio_iommu_type1_release(iommu_data)
#[kprobe]
pub fn type1_release(ctx: ProbeContext) -> u32 {
    hit(ProbeId::Type1Release);
    let c = ctx.arg::<u64>(0).unwrap_or(0);
    let release = Container { container: c };
    emit(
        thread(),
        Record::new(ProbeId::Type1Release, 0, &release).container(c),
    );
    0
}

/// vfio_remove_dma(iommu, dma): ties a mapping to its container. Inside
/// an UNMAP the removal's unpins class their pages against the huge zero
/// page's pfn read here, once (`Thread::huge_pfn_for_unpin`).
#[kprobe]
pub fn remove_dma(ctx: ProbeContext) -> u32 {
    hit(ProbeId::RemoveDma);
    let c = ctx.arg::<u64>(0).unwrap_or(0);
    let dma = ctx.arg::<u64>(1).unwrap_or(0);
    let remove = RemoveDma { container: c, dma };
    let mut t = thread();
    if let Some(t) = t.as_deref_mut()
        && t.ioctl.live != 0
        && t.ioctl.args.cmd == VFIO_IOMMU_UNMAP_DMA
    {
        let huge_pfn = ZeroIds::load().map_or(!0, |z| z.huge_pfn());
        t.removal.park(&Removal { dma, huge_pfn });
    }
    emit(t, Record::new(ProbeId::RemoveDma, 0, &remove).container(c));
    0
}
