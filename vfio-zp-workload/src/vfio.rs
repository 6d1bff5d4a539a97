//! The few VFIO ioctls a workload needs (linux/vfio.h), on a type1 container.
use std::{
    fs::{File, OpenOptions},
    os::fd::AsRawFd,
};

use anyhow::Context;

const VFIO_TYPE: u64 = b';' as u64;
const fn io(nr: u64) -> u64 {
    (VFIO_TYPE << 8) | (100 + nr)
}
const VFIO_GET_API_VERSION: u64 = io(0);
const VFIO_CHECK_EXTENSION: u64 = io(1);
const VFIO_SET_IOMMU: u64 = io(2);
const VFIO_GROUP_GET_STATUS: u64 = io(3);
const VFIO_GROUP_SET_CONTAINER: u64 = io(4);
const VFIO_IOMMU_MAP_DMA: u64 = io(13);
const VFIO_IOMMU_UNMAP_DMA: u64 = io(14);

const VFIO_API_VERSION: i32 = 0;
const VFIO_TYPE1_IOMMU: u64 = 1;
const VFIO_TYPE1V2_IOMMU: u64 = 3;
const VFIO_GROUP_FLAGS_VIABLE: u32 = 1;

pub const MAP_READ: u32 = 1;
pub const MAP_WRITE: u32 = 2;

#[repr(C)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

#[repr(C)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

#[repr(C)]
struct DmaUnmap {
    argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}

fn ioctl(f: &File, what: &str, req: u64, arg: libc::c_ulong) -> anyhow::Result<i32> {
    // SAFETY: `arg` is a value or a pointer to a live struct of the right layout for `req`.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), req as _, arg) };
    if r < 0 {
        anyhow::bail!("{what} failed: {}", std::io::Error::last_os_error());
    }
    Ok(r)
}

/// A type1 container with one group attached; closing it (drop) releases
/// every mapping still in it.
pub struct Container {
    container: File,
    _group: File,
}

impl Container {
    pub fn open(group: &str) -> anyhow::Result<Container> {
        let rw = |p: &str| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)
                .with_context(|| format!("open {p}"))
        };
        let container = rw("/dev/vfio/vfio")?;
        let v = ioctl(&container, "VFIO_GET_API_VERSION", VFIO_GET_API_VERSION, 0)?;
        anyhow::ensure!(v == VFIO_API_VERSION, "unknown VFIO API version {v}");
        let group = rw(group)?;
        let mut st = GroupStatus {
            argsz: size_of::<GroupStatus>() as u32,
            flags: 0,
        };
        ioctl(
            &group,
            "VFIO_GROUP_GET_STATUS",
            VFIO_GROUP_GET_STATUS,
            &mut st as *mut _ as _,
        )?;
        anyhow::ensure!(
            st.flags & VFIO_GROUP_FLAGS_VIABLE != 0,
            "group not viable (all its devices must be bound to vfio)"
        );
        let fd: i32 = container.as_raw_fd();
        ioctl(
            &group,
            "VFIO_GROUP_SET_CONTAINER",
            VFIO_GROUP_SET_CONTAINER,
            &fd as *const i32 as _,
        )?;
        let kind = if ioctl(
            &container,
            "VFIO_CHECK_EXTENSION",
            VFIO_CHECK_EXTENSION,
            VFIO_TYPE1V2_IOMMU as _,
        )? > 0
        {
            VFIO_TYPE1V2_IOMMU
        } else {
            VFIO_TYPE1_IOMMU
        };
        ioctl(&container, "VFIO_SET_IOMMU", VFIO_SET_IOMMU, kind as _)?;
        Ok(Container {
            container,
            _group: group,
        })
    }

    pub fn map(&self, vaddr: u64, iova: u64, size: u64, flags: u32) -> anyhow::Result<()> {
        let m = DmaMap {
            argsz: size_of::<DmaMap>() as u32,
            flags,
            vaddr,
            iova,
            size,
        };
        ioctl(
            &self.container,
            "VFIO_IOMMU_MAP_DMA",
            VFIO_IOMMU_MAP_DMA,
            &m as *const _ as _,
        )
        .map(drop)
    }

    /// Returns the size the kernel reports unmapped.
    pub fn unmap(&self, iova: u64, size: u64) -> anyhow::Result<u64> {
        let mut u = DmaUnmap {
            argsz: size_of::<DmaUnmap>() as u32,
            flags: 0,
            iova,
            size,
        };
        ioctl(
            &self.container,
            "VFIO_IOMMU_UNMAP_DMA",
            VFIO_IOMMU_UNMAP_DMA,
            &mut u as *mut _ as _,
        )?;
        Ok(u.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_uapi_header() {
        // linux/vfio.h: VFIO_IOMMU_MAP_DMA _IO(VFIO_TYPE, VFIO_BASE + 13), VFIO_TYPE ';', VFIO_BASE 100.
        assert_eq!(VFIO_IOMMU_MAP_DMA, 0x3b71);
        assert_eq!(VFIO_IOMMU_UNMAP_DMA, 0x3b72);
        assert_eq!(VFIO_GROUP_SET_CONTAINER, 0x3b68);
        assert_eq!(size_of::<DmaMap>(), 32);
        assert_eq!(size_of::<DmaUnmap>(), 24);
    }
}
