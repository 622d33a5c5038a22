//! The IDX format of MNIST and Fashion-MNIST (`*-ubyte`, optionally gzipped): a big-endian
//! header (two zero bytes, the element type, the number of dimensions, each dimension as u32)
//! followed by the elements. Only unsigned bytes (type 0x08) are read: images and labels.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::Path;

/// An IDX array of unsigned bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Idx {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

impl Idx {
    /// Element `i` along the first dimension (one image, one label).
    pub fn item(&self, i: usize) -> &[u8] {
        let n: usize = self.dims[1..].iter().product();
        &self.data[i * n..(i + 1) * n]
    }

    pub fn len(&self) -> usize {
        self.dims.first().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Read an IDX file; `.gz` files are decompressed. Errors name the file.
pub fn read(path: &Path) -> Result<Idx> {
    let raw = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(|| format!("{}: not a readable gzip file", path.display()))?;
        out
    } else {
        raw
    };
    parse(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn parse(b: &[u8]) -> Result<Idx> {
    if b.len() < 4 || b[0] != 0 || b[1] != 0 {
        bail!("not an IDX file (bad magic number)");
    }
    if b[2] != 0x08 {
        bail!(
            "IDX element type 0x{:02x} is not unsigned bytes (0x08)",
            b[2]
        );
    }
    let nd = b[3] as usize;
    let header = 4 + 4 * nd;
    if nd == 0 || b.len() < header {
        bail!("truncated IDX header ({nd} dimensions)");
    }
    let dims: Vec<usize> = (0..nd)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]) as usize
        })
        .collect();
    let n: usize = dims.iter().product();
    if b.len() - header != n {
        bail!(
            "IDX dimensions {dims:?} need {n} bytes of data, the file has {}",
            b.len() - header
        );
    }
    Ok(Idx {
        dims,
        data: b[header..].to_vec(),
    })
}

/// Serialise an unsigned-byte IDX array (for tests and fixtures).
pub fn to_bytes(idx: &Idx) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, idx.dims.len() as u8];
    for &d in &idx.dims {
        out.extend((d as u32).to_be_bytes());
    }
    out.extend(&idx.data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_raw_and_gzipped_files_and_names_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let a = Idx {
            dims: vec![3, 2, 2],
            data: (0..12).collect(),
        };
        let raw = dir.path().join("x-idx3-ubyte");
        std::fs::write(&raw, to_bytes(&a)).unwrap();
        let gz = dir.path().join("x-idx3-ubyte.gz");
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&to_bytes(&a)).unwrap();
        std::fs::write(&gz, e.finish().unwrap()).unwrap();
        for p in [&raw, &gz] {
            let b = read(p).unwrap();
            assert_eq!(b, a);
            assert_eq!(b.len(), 3);
            assert_eq!(b.item(1), &[4, 5, 6, 7]);
        }
        // truncated data, wrong type, bad magic: one line naming the file
        let mut bytes = to_bytes(&a);
        bytes.pop();
        std::fs::write(&raw, &bytes).unwrap();
        let err = read(&raw).unwrap_err().to_string();
        assert!(
            err.contains("x-idx3-ubyte") && err.contains("need 12 bytes"),
            "{err}"
        );
        bytes = to_bytes(&a);
        bytes[2] = 0x0d;
        std::fs::write(&raw, &bytes).unwrap();
        assert!(read(&raw).unwrap_err().to_string().contains("0x0d"));
        std::fs::write(&raw, b"PK\x03\x04").unwrap();
        assert!(read(&raw).unwrap_err().to_string().contains("bad magic"));
    }
}
