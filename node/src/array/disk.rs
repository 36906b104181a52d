//! One physical disk of the disk array: a fixed-size file in the array
//! directory with a checksummed header naming the array and the disk.
//!
//! Owns the on-disk layout of a disk file (header, metadata area, data area)
//! and bounds checks on every access. It must never interpret the metadata
//! area (that is the LU's business) and never touch another disk's file.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::member::Member;
use super::ArrayError;

/// Bytes at the start of every disk file reserved for the disk header and
/// the LU's fixed metadata (superblock, write-intent bitmap, journal); the
/// block checksum table follows, sized by the capacity.
const FIXED_META_BYTES: u64 = 4 << 20;
/// The disk header occupies the first block of the metadata area.
const HEADER_BYTES: usize = 4096;
const MAGIC: &[u8; 8] = b"NASDISK1";
/// Version 2 added the block checksum table.
const VERSION: u32 = 2;

/// Bytes before the data area of a disk of `capacity` bytes.
fn meta_bytes(capacity: u64) -> u64 {
    FIXED_META_BYTES + super::checksum::table_bytes(capacity)
}

/// What a disk file's header says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskHeader {
    pub version: u32,
    pub array_id: u128,
    pub number: u32,
    /// Usable bytes after the metadata area.
    pub capacity: u64,
}

impl DiskHeader {
    fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.number.to_le_bytes());
        b[16..32].copy_from_slice(&self.array_id.to_le_bytes());
        b[32..40].copy_from_slice(&self.capacity.to_le_bytes());
        let crc = crc32fast::hash(&b[0..40]);
        b[40..44].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8; HEADER_BYTES]) -> Option<Self> {
        let word = |r: std::ops::Range<usize>| -> Option<&[u8]> { b.get(r) };
        if word(0..8)? != MAGIC {
            return None;
        }
        let crc = u32::from_le_bytes(word(40..44)?.try_into().ok()?);
        if crc32fast::hash(word(0..40)?) != crc {
            return None;
        }
        Some(Self {
            version: u32::from_le_bytes(word(8..12)?.try_into().ok()?),
            number: u32::from_le_bytes(word(12..16)?.try_into().ok()?),
            array_id: u128::from_le_bytes(word(16..32)?.try_into().ok()?),
            capacity: u64::from_le_bytes(word(32..40)?.try_into().ok()?),
        })
    }
}

/// The file name of disk `number` in the array directory.
pub fn disk_path(dir: &Path, number: u32) -> PathBuf {
    dir.join(format!("disk-{number:03}.img"))
}

/// The arrays the disk files in `dir` say they belong to (headers that
/// cannot be read are skipped: this is a hint for an operator, not a check
/// before writing).
pub fn array_ids_in(dir: &Path) -> std::collections::BTreeSet<u128> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Default::default();
    };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("disk-") && name.ends_with(".img")
        })
        .filter_map(|e| {
            let file = File::open(e.path()).ok()?;
            let mut raw = [0u8; HEADER_BYTES];
            file.read_exact_at(&mut raw, 0).ok()?;
            DiskHeader::decode(&raw).map(|h| h.array_id)
        })
        .collect()
}

/// An open physical disk.
#[derive(Debug)]
pub struct PhysicalDisk {
    file: File,
    header: DiskHeader,
}

impl PhysicalDisk {
    /// Creates disk `number` as a sparse file; refuses to overwrite any
    /// existing file, since it may hold another array's data.
    pub fn create(dir: &Path, array_id: u128, number: u32, capacity: u64) -> Result<Self, ArrayError> {
        let path = disk_path(dir, number);
        let io = |e| ArrayError::io(format!("cannot create disk {number} at {}", path.display()), e);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| {
                if e.kind() == ErrorKind::AlreadyExists {
                    ArrayError::DiskExists {
                        disk: number,
                        path: path.clone(),
                    }
                } else {
                    io(e)
                }
            })?;
        let header = DiskHeader {
            version: VERSION,
            array_id,
            number,
            capacity,
        };
        let len = meta_bytes(capacity)
            .checked_add(capacity)
            .ok_or(ArrayError::OutOfRange {
                what: "disk capacity",
                offset: capacity,
                len: 0,
                limit: u64::MAX / 2,
            })?;
        file.set_len(len).map_err(io)?;
        file.write_all_at(&header.encode(), 0).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(Self { file, header })
    }

    /// Opens disk `number` and checks that it is the disk it claims to be:
    /// the right array, the right number, the right size.
    pub fn open(dir: &Path, array_id: u128, number: u32, capacity: u64) -> Result<Self, ArrayError> {
        let path = disk_path(dir, number);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(ArrayError::DiskMissing { disk: number, path }),
            Err(e) => {
                return Err(ArrayError::io(
                    format!("cannot open disk {number} at {}", path.display()),
                    e,
                ))
            }
        };
        let mut raw = [0u8; HEADER_BYTES];
        if let Err(e) = file.read_exact_at(&mut raw, 0) {
            return Err(if e.kind() == ErrorKind::UnexpectedEof {
                ArrayError::DiskWrongSize {
                    disk: number,
                    path,
                    found: file_len(&file),
                    expected: meta_bytes(capacity) + capacity,
                }
            } else {
                ArrayError::io(format!("cannot read the header of disk {number}"), e)
            });
        }
        let Some(header) = DiskHeader::decode(&raw) else {
            return Err(ArrayError::DiskNoHeader { disk: number, path });
        };
        if header.version != VERSION {
            return Err(ArrayError::DiskVersion {
                disk: number,
                path,
                found: header.version,
                expected: VERSION,
            });
        }
        if header.array_id != array_id {
            return Err(ArrayError::DiskForeign {
                disk: number,
                path,
                found: header.array_id,
                expected: array_id,
            });
        }
        if header.number != number {
            return Err(ArrayError::DiskSwapped {
                disk: number,
                path,
                found: header.number,
            });
        }
        let expected = meta_bytes(capacity) + capacity;
        let found = file_len(&file);
        if header.capacity != capacity || found != expected {
            return Err(ArrayError::DiskWrongSize {
                disk: number,
                path,
                found,
                expected,
            });
        }
        Ok(Self { file, header })
    }

    fn zero(&self, at: u64, len: u64) -> Result<(), ArrayError> {
        use std::os::fd::AsRawFd;
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: the descriptor is owned by `self.file`; fallocate reads no user memory.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, at as i64, len as i64) };
        if rc == 0 {
            return Ok(());
        }
        // Some file systems cannot punch holes: write the zeros instead.
        let zeros = vec![0u8; 1 << 20];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.file
                .write_all_at(&zeros[..n], at + done)
                .map_err(|e| ArrayError::io(format!("cannot zero disk {}", self.number()), e))?;
            done += n as u64;
        }
        Ok(())
    }

    fn data_offset(&self, offset: u64, len: usize) -> Result<u64, ArrayError> {
        check_range("disk data", offset, len, self.header.capacity)?;
        Ok(meta_bytes(self.header.capacity) + offset)
    }

    fn meta_offset(&self, offset: u64, len: usize) -> Result<u64, ArrayError> {
        check_range(
            "disk metadata",
            offset,
            len,
            meta_bytes(self.header.capacity) - HEADER_BYTES as u64,
        )?;
        Ok(HEADER_BYTES as u64 + offset)
    }
}

impl Member for PhysicalDisk {
    fn number(&self) -> u32 {
        self.header.number
    }

    fn capacity(&self) -> u64 {
        self.header.capacity
    }

    /// Reads from the data area.
    fn read_data(&self, offset: u64, buf: &mut [u8]) -> Result<(), ArrayError> {
        let at = self.data_offset(offset, buf.len())?;
        self.file
            .read_exact_at(buf, at)
            .map_err(|e| ArrayError::io(format!("read of disk {} at {offset} failed", self.number()), e))
    }

    /// Reads one contiguous range of the data area into several buffers, in
    /// order, with as few system calls as the kernel allows (`preadv`).
    fn read_data_vectored(&self, offset: u64, bufs: &mut [std::io::IoSliceMut<'_>]) -> Result<(), ArrayError> {
        use std::os::fd::AsRawFd;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut at = self.data_offset(offset, total)?;
        let err = |e| ArrayError::io(format!("read of disk {} at {offset} failed", self.number()), e);
        let mut bufs = bufs;
        while !bufs.is_empty() {
            let count = bufs.len().min(1024) as libc::c_int;
            // SAFETY: IoSliceMut is ABI-compatible with iovec, and every slice
            // is a live, exclusively borrowed buffer for the whole call.
            let n = unsafe { libc::preadv(self.file.as_raw_fd(), bufs.as_ptr().cast(), count, at as libc::off_t) };
            match n {
                n if n > 0 => {
                    at += n as u64;
                    std::io::IoSliceMut::advance_slices(&mut bufs, n as usize);
                }
                0 => return Err(err(std::io::ErrorKind::UnexpectedEof.into())),
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(err(e));
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes to the data area.
    fn write_data(&self, offset: u64, data: &[u8]) -> Result<(), ArrayError> {
        let at = self.data_offset(offset, data.len())?;
        self.file
            .write_all_at(data, at)
            .map_err(|e| ArrayError::io(format!("write of disk {} at {offset} failed", self.number()), e))
    }

    /// Reads from the metadata area (after the disk header).
    fn read_meta(&self, offset: u64, buf: &mut [u8]) -> Result<(), ArrayError> {
        let at = self.meta_offset(offset, buf.len())?;
        self.file
            .read_exact_at(buf, at)
            .map_err(|e| ArrayError::io(format!("metadata read of disk {} failed", self.number()), e))
    }

    fn write_meta(&self, offset: u64, data: &[u8]) -> Result<(), ArrayError> {
        let at = self.meta_offset(offset, data.len())?;
        self.file
            .write_all_at(data, at)
            .map_err(|e| ArrayError::io(format!("metadata write of disk {} failed", self.number()), e))
    }

    /// Writes to the metadata area and makes it durable before it returns,
    /// because metadata must reach the disk before the data it describes
    /// (intent bits before stripes, superblocks before promotion). Durable
    /// means fdatasync: it persists the file's block allocation (the disk
    /// file is sparse) and flushes the device's write cache, which a
    /// range-only flush does neither of.
    fn write_meta_durable(&self, offset: u64, data: &[u8]) -> Result<(), ArrayError> {
        self.write_meta(offset, data)?;
        self.sync()
    }

    /// Asks the kernel to start reading a data range now, asynchronously,
    /// so that the reads that follow find it in memory. Only a hint.
    fn will_need(&self, offset: u64, len: u64) {
        use std::os::fd::AsRawFd;
        if check_range("disk data", offset, len as usize, self.header.capacity).is_ok() {
            // SAFETY: the descriptor is owned by `self.file`; fadvise reads no user memory.
            unsafe {
                libc::posix_fadvise(
                    self.file.as_raw_fd(),
                    (meta_bytes(self.header.capacity) + offset) as i64,
                    len as i64,
                    libc::POSIX_FADV_WILLNEED,
                )
            };
        }
    }

    /// Zeroes a range of the data area, punching a hole where the file
    /// system can (instant, and keeps the disk file sparse).
    fn zero_data(&self, offset: u64, len: u64) -> Result<(), ArrayError> {
        check_range("disk data", offset, len as usize, self.header.capacity)?;
        self.zero(meta_bytes(self.header.capacity) + offset, len)
    }

    /// Zeroes a range of the metadata area.
    fn zero_meta(&self, offset: u64, len: u64) -> Result<(), ArrayError> {
        let at = self.meta_offset(offset, len as usize)?;
        self.zero(at, len)
    }

    /// Makes every write so far durable.
    fn sync(&self) -> Result<(), ArrayError> {
        self.file
            .sync_data()
            .map_err(|e| ArrayError::io(format!("flush of disk {} failed", self.number()), e))
    }

    /// Starts writing this disk's dirty pages back without waiting, so
    /// that a later [`Member::sync`] finds little left to do. Only a
    /// hint: failures show up at the sync.
    fn start_writeback(&self) {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is owned by `self.file` and open for the
        // whole call; sync_file_range reads no user memory.
        unsafe { libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    }
}

/// Checks that `[offset, offset + len)` lies within `[0, limit)` without overflow.
pub fn check_range(what: &'static str, offset: u64, len: usize, limit: u64) -> Result<(), ArrayError> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= limit => Ok(()),
        _ => Err(ArrayError::OutOfRange {
            what,
            offset,
            len: len as u64,
            limit,
        }),
    }
}

fn file_len(file: &File) -> u64 {
    file.metadata().map_or(0, |m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: u128 = 0x1234;

    #[test]
    fn header_round_trips_and_detects_damage() {
        let h = DiskHeader {
            version: VERSION,
            array_id: ID,
            number: 7,
            capacity: 1 << 30,
        };
        let mut raw = h.encode();
        assert_eq!(DiskHeader::decode(&raw), Some(h));
        raw[20] ^= 1;
        assert_eq!(DiskHeader::decode(&raw), None);
    }

    #[test]
    fn open_names_missing_foreign_swapped_and_truncated_disks() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        PhysicalDisk::create(d, ID, 1, 1 << 20).unwrap();
        PhysicalDisk::create(d, ID, 2, 1 << 20).unwrap();
        assert!(matches!(
            PhysicalDisk::create(d, ID, 1, 1 << 20),
            Err(ArrayError::DiskExists { disk: 1, .. })
        ));
        assert!(PhysicalDisk::open(d, ID, 1, 1 << 20).is_ok());
        assert!(matches!(
            PhysicalDisk::open(d, ID, 3, 1 << 20),
            Err(ArrayError::DiskMissing { disk: 3, .. })
        ));
        assert!(matches!(
            PhysicalDisk::open(d, ID + 1, 1, 1 << 20),
            Err(ArrayError::DiskForeign { .. })
        ));
        std::fs::rename(disk_path(d, 2), disk_path(d, 4)).unwrap();
        assert!(matches!(
            PhysicalDisk::open(d, ID, 4, 1 << 20),
            Err(ArrayError::DiskSwapped { found: 2, .. })
        ));
        let f = OpenOptions::new().write(true).open(disk_path(d, 1)).unwrap();
        f.set_len(meta_bytes(1 << 20) + 4096).unwrap();
        assert!(matches!(
            PhysicalDisk::open(d, ID, 1, 1 << 20),
            Err(ArrayError::DiskWrongSize { .. })
        ));
    }

    #[test]
    fn data_access_is_bounds_checked() {
        let dir = tempfile::tempdir().unwrap();
        let disk = PhysicalDisk::create(dir.path(), ID, 1, 1 << 20).unwrap();
        let mut buf = [0u8; 16];
        assert!(disk.read_data((1 << 20) - 8, &mut buf).is_err());
        assert!(disk.read_data(u64::MAX - 4, &mut buf).is_err());
        disk.write_data(100, b"hello").unwrap();
        disk.read_data(100, &mut buf[..5]).unwrap();
        assert_eq!(&buf[..5], b"hello");
    }
}
