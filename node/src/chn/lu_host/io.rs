//! Raw reads and writes of an LU open on this CHN (the Admin service's
//! `ReadLu`/`WriteLu`), off the async runtime.

use std::sync::Arc;

use super::{blocking, LuHost};
use crate::array::{BlockDevice, LuDevice};
use crate::chn::Error;

impl LuHost {
    /// Reads raw bytes of an LU open here.
    pub async fn read(dev: Arc<LuDevice>, offset: u64, len: usize) -> Result<Vec<u8>, Error> {
        blocking(move || {
            let mut buf = vec![0u8; len];
            dev.read_at(offset, &mut buf)?;
            Ok(buf)
        })
        .await
    }

    /// Writes raw bytes to an LU open here, flushing if asked.
    pub async fn write(dev: Arc<LuDevice>, offset: u64, data: Vec<u8>, flush: bool) -> Result<(), Error> {
        blocking(move || {
            dev.write_at(offset, &data)?;
            if flush {
                dev.flush()?;
            }
            Ok(())
        })
        .await
    }
}
