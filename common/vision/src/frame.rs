//! Frames: 8-bit RGB pixels, row by row, and the binary PPM (`P6`) files the golden frames are
//! kept in (netpbm's format: a text header, then the pixels; no compression, no library).

use thiserror::Error;

/// What is wrong with a frame or a PPM file.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The pixel buffer does not hold width x height x 3 bytes.
    #[error("a {width}x{height} RGB8 frame needs {expected} bytes, the buffer has {got}")]
    Size {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
        /// width x height x 3.
        expected: usize,
        /// The buffer's length.
        got: usize,
    },
    /// A zero width or height.
    #[error("a frame must have at least one pixel (got {width}x{height})")]
    Empty {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// The file is not a binary PPM with 8-bit samples.
    #[error("not a binary PPM (P6, maximum value 255): {why}")]
    Ppm {
        /// What was found instead.
        why: String,
    },
}

/// One RGB8 frame (R, G, B bytes per pixel, rows top to bottom, no padding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

impl Frame {
    /// A frame of `width` x `height` pixels from its bytes.
    pub fn new(width: u32, height: u32, rgb: Vec<u8>) -> Result<Frame, FrameError> {
        if width == 0 || height == 0 {
            return Err(FrameError::Empty { width, height });
        }
        let expected = width as usize * height as usize * 3;
        if rgb.len() != expected {
            return Err(FrameError::Size {
                width,
                height,
                expected,
                got: rgb.len(),
            });
        }
        Ok(Frame { width, height, rgb })
    }

    /// A frame from a binary PPM file's bytes (`P6`, maximum value 255; comments allowed).
    pub fn from_ppm(bytes: &[u8]) -> Result<Frame, FrameError> {
        let bad = |why: &str| FrameError::Ppm { why: why.into() };
        let mut pos = 0;
        let mut fields = Vec::with_capacity(4);
        while fields.len() < 4 {
            // Whitespace and `#` comments (to the end of the line) separate the header fields.
            while pos < bytes.len() && (bytes[pos].is_ascii_whitespace() || bytes[pos] == b'#') {
                if bytes[pos] == b'#' {
                    while pos < bytes.len() && bytes[pos] != b'\n' {
                        pos += 1;
                    }
                } else {
                    pos += 1;
                }
            }
            let start = pos;
            while pos < bytes.len() && !bytes[pos].is_ascii_whitespace() {
                pos += 1;
            }
            if start == pos {
                return Err(bad("the header ends early"));
            }
            fields.push(&bytes[start..pos]);
        }
        if fields[0] != b"P6" {
            return Err(bad("the magic number is not P6"));
        }
        let number = |f: &[u8], what: &str| -> Result<u32, FrameError> {
            std::str::from_utf8(f)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad(&format!("the {what} is not a number")))
        };
        let width = number(fields[1], "width")?;
        let height = number(fields[2], "height")?;
        if number(fields[3], "maximum value")? != 255 {
            return Err(bad(
                "the maximum value is not 255 (16-bit samples are not supported)",
            ));
        }
        // Exactly one whitespace byte separates the header from the pixels.
        let pixels = bytes.get(pos + 1..).ok_or_else(|| bad("no pixels"))?;
        Frame::new(width, height, pixels.to_vec())
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The pixels: R, G, B bytes, row by row.
    pub fn rgb(&self) -> &[u8] {
        &self.rgb
    }

    /// The pixel at (`x`, `y`) as [R, G, B].
    pub fn pixel(&self, x: u32, y: u32) -> [u8; 3] {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_ppm_with_a_comment() {
        let mut file = b"P6\n# made by hand\n2 1\n255\n".to_vec();
        file.extend([1, 2, 3, 4, 5, 6]);
        let f = Frame::from_ppm(&file).unwrap();
        assert_eq!((f.width(), f.height()), (2, 1));
        assert_eq!(f.pixel(1, 0), [4, 5, 6]);
    }

    #[test]
    fn refuses_short_and_foreign_files() {
        let mut short = b"P6 2 2 255\n".to_vec();
        short.extend([0; 11]);
        let e = Frame::from_ppm(&short).unwrap_err().to_string();
        assert!(e.contains("needs 12 bytes, the buffer has 11"), "{e}");
        let e = Frame::from_ppm(b"P3 1 1 255\n0 0 0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not P6"), "{e}");
        let e = Frame::from_ppm(b"P6 1 1 65535\n").unwrap_err().to_string();
        assert!(e.contains("not 255"), "{e}");
        assert!(Frame::new(0, 1, vec![]).is_err());
    }
}
