//! From model-range tensors to pixels: the grid layout shared by the CLI's PNGs and the
//! page's canvases, and a minimal `.npy` (float32, C order) reader and writer.

use crate::error::{EngineError, Result};

/// Images per side of the most square grid that holds `n` images (rows are filled first).
pub fn grid_columns(n: usize) -> usize {
    (n as f64).sqrt().ceil().max(1.0) as usize
}

/// Tiles `n` images [n, c, h, w] (values in [-1, 1]) into one 8-bit RGBA grid with a
/// `gap`-pixel border. 1-channel images become gray, 3-channel RGB; others use channel 0.
/// Returns (width, height, rgba).
pub fn grid_rgba(x: &[f32], [n, c, h, w]: [usize; 4], gap: usize) -> (usize, usize, Vec<u8>) {
    let cols = grid_columns(n);
    let rows = n.div_ceil(cols).max(1);
    let (gw, gh) = (cols * (w + gap) + gap, rows * (h + gap) + gap);
    let mut out = vec![0u8; gw * gh * 4];
    for px in out.chunks_exact_mut(4) {
        px.copy_from_slice(&[24, 24, 24, 255]);
    }
    let to_u8 = |v: f32| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
    for i in 0..n {
        let (ox, oy) = (gap + (i % cols) * (w + gap), gap + (i / cols) * (h + gap));
        for y in 0..h {
            for xx in 0..w {
                let at = |ch: usize| x[((i * c + ch) * h + y) * w + xx];
                let (r, g, b) = if c == 3 {
                    (to_u8(at(0)), to_u8(at(1)), to_u8(at(2)))
                } else {
                    let v = to_u8(at(0));
                    (v, v, v)
                };
                let o = ((oy + y) * gw + ox + xx) * 4;
                out[o..o + 4].copy_from_slice(&[r, g, b, 255]);
            }
        }
    }
    (gw, gh, out)
}

/// A float32 C-order `.npy` file (format 1.0).
pub fn npy_bytes(data: &[f32], shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = if dims.len() == 1 { format!("{},", dims[0]) } else { dims.join(", ") };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({tuple}), }}");
    // Magic (6) + version (2) + length (2) + header + '\n' is padded to a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 4);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Parses a float32 little-endian C-order `.npy` file; returns (shape, data).
pub fn parse_npy(bytes: &[u8]) -> Result<(Vec<usize>, Vec<f32>)> {
    let bad = |m: &str| EngineError::input("npy", format!("npy: {m}"));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("not a .npy file (no \\x93NUMPY magic)"));
    }
    let (header_len, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => {
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(bad(&format!("unsupported .npy version {v}"))),
    };
    // Sizes come from the file: checked, since usize is 32 bits in wasm and a u32 header
    // length plus 12 wraps there.
    let body_start = start.checked_add(header_len).ok_or_else(|| bad("truncated header"))?;
    let header = bytes
        .get(start..body_start)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header"))?;
    if !header.contains("'descr': '<f4'") {
        return Err(bad(&format!("only float32 ('<f4') arrays are supported; header: {}", header.trim())));
    }
    if header.contains("'fortran_order': True") {
        return Err(bad("Fortran-order arrays are not supported"));
    }
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| bad("no shape in header"))?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| bad(&format!("bad dimension {s:?}"))))
        .collect::<Result<Vec<_>>>()?;
    let body = &bytes[body_start..];
    let needed = shape.iter().try_fold(4usize, |acc, &d| acc.checked_mul(d));
    if needed != Some(body.len()) {
        let needed = needed.map_or_else(|| "more than usize::MAX".to_string(), |n| n.to_string());
        return Err(bad(&format!(
            "shape {shape:?} needs {needed} bytes of data, the file has {}",
            body.len()
        )));
    }
    let data = body.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Ok((shape, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip() {
        let data: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        let bytes = npy_bytes(&data, &[2, 3, 4]);
        assert_eq!((bytes.len() - data.len() * 4) % 64, 0);
        assert_eq!(parse_npy(&bytes).unwrap(), (vec![2, 3, 4], data));
        assert!(parse_npy(&bytes[..bytes.len() - 1]).is_err());
        assert!(parse_npy(b"PK\x03\x04").is_err());
    }

    #[test]
    fn npy_sizes_from_the_header_cannot_wrap() {
        // 2^62 * 8 elements (times 4 bytes) overflows usize: an error, not a wrapped size
        // that happens to match a short body (or an overflow panic).
        let mut bytes = npy_bytes(&[], &[0]);
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 8), }";
        bytes.truncate(10);
        bytes[8..10].copy_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        let e = parse_npy(&bytes).unwrap_err().to_string();
        assert!(e.contains("more than usize::MAX"), "{e}");
        // A version-2 header length of u32::MAX reads past the end: truncated, not a panic.
        let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
        v2.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_npy(&v2).unwrap_err().to_string().contains("truncated header"));
    }

    #[test]
    fn grid_places_images_row_major() {
        // Three 1x2x2 images: 2 columns, 2 rows, gap 1.
        let x = [-1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0];
        let (w, h, px) = grid_rgba(&x, [3, 1, 2, 2], 1);
        assert_eq!((w, h), (7, 7));
        let at = |x: usize, y: usize| px[(y * w + x) * 4];
        assert_eq!(at(1, 1), 0);
        assert_eq!(at(4, 1), 255);
        assert_eq!(at(1, 4), 128);
        assert_eq!(at(0, 0), 24);
    }
}
