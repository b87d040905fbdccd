//! Images to PNG: grids of NCHW tensors in [0, 1], written atomically.

use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use thiserror::Error;

/// What can go wrong writing an image.
#[derive(Debug, Error)]
pub enum ImageError {
    /// The tensor is not NCHW with 1 or 3 channels, or a buffer has the wrong length.
    #[error("cannot make an image from shape {0:?}: expected [n, 1 or 3, h, w]")]
    Shape(Vec<usize>),
    /// Writing the file failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The PNG encoder failed.
    #[error("PNG encoding failed: {0}")]
    Png(String),
}

/// An 8-bit image, grey or RGB, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// `height·width·channels` bytes.
    pub pixels: Vec<u8>,
}

impl Image {
    /// Encodes the image as PNG bytes.
    pub fn to_png(&self) -> Result<Vec<u8>, ImageError> {
        let mut out = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
            encoder.set_color(if self.channels == 1 {
                png::ColorType::Grayscale
            } else {
                png::ColorType::Rgb
            });
            encoder.set_depth(png::BitDepth::Eight);
            let mut writer = encoder.write_header().map_err(|e| ImageError::Png(e.to_string()))?;
            writer.write_image_data(&self.pixels).map_err(|e| ImageError::Png(e.to_string()))?;
        }
        Ok(out)
    }

    /// Writes the image as a PNG file, atomically (a temporary file renamed into place).
    pub fn save(&self, path: &Path) -> Result<(), ImageError> {
        write_atomically(path, &self.to_png()?)
    }
}

/// Writes `bytes` to `path` atomically ([`scorefield_core::io::write_atomically`]: a uniquely
/// named, synced temporary file in the same directory renamed over `path`, the directory
/// synced), so a reader never sees a partial file and an existing file is replaced only by a
/// complete one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    scorefield_core::io::write_atomically(path, bytes)
        .map_err(|source| ImageError::Io { path: path.to_path_buf(), source })
}

/// Tiles a batch of NCHW images in [0, 1] (values are clamped) into a grid with `columns`
/// columns and a 2-pixel border, grey for 1 channel, RGB for 3.
pub fn grid(images: Tensor<4>, columns: usize) -> Result<Image, ImageError> {
    let [n, c, h, w] = images.dims();
    if !(c == 1 || c == 3) || n == 0 || columns == 0 {
        return Err(ImageError::Shape(vec![n, c, h, w]));
    }
    let values = images
        .clamp(0.0, 1.0)
        .try_into_vec_as::<f32>()
        .map_err(|e| ImageError::Png(e.to_string()))?;
    let rows = n.div_ceil(columns);
    let pad = 2;
    let (width, height) = (columns * (w + pad) + pad, rows * (h + pad) + pad);
    let mut pixels = vec![0u8; width * height * c];
    for k in 0..n {
        let (gy, gx) = (k / columns, k % columns);
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let v = values[((k * c + ch) * h + y) * w + x];
                    let (py, px) = (pad + gy * (h + pad) + y, pad + gx * (w + pad) + x);
                    pixels[(py * width + px) * c + ch] = (v * 255.0).round() as u8;
                }
            }
        }
    }
    Ok(Image { width, height, channels: c, pixels })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn grid_places_images_and_png_decodes_back() {
        let device = scorefield_core::device("flex").unwrap();
        let values: Vec<f32> = (0..3 * 4).map(|i| i as f32 / 11.0).collect();
        let x = Tensor::<4>::from_data(TensorData::new(values, [3, 1, 2, 2]), &device);
        let img = grid(x, 2).unwrap();
        assert_eq!((img.width, img.height), (2 * 4 + 2, 2 * 4 + 2));
        // Image 2 (third) sits in row 1, column 0: its top-left pixel is value 8/11.
        assert_eq!(img.pixels[(2 + 4) * img.width + 2], (8.0f32 / 11.0 * 255.0).round() as u8);
        let dir = std::env::temp_dir().join(format!("scorefield-grid-{}", std::process::id()));
        let path = dir.join("grid.png");
        img.save(&path).unwrap();
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width as usize, info.height as usize), (img.width, img.height));
        assert_eq!(&buf[..info.buffer_size()], &img.pixels[..]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_shapes_are_typed_errors() {
        let device = scorefield_core::device("flex").unwrap();
        let x = Tensor::<4>::zeros([2, 2, 3, 3], &device);
        assert!(matches!(grid(x, 2), Err(ImageError::Shape(_))));
    }
}
