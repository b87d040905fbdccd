//! Helpers shared by the integration tests.

use burn::tensor::{DType, Device, Tensor, TensorData};

/// The flex device every CPU test runs on.
pub fn flex() -> Device {
    scorefield::device("flex").unwrap()
}

/// A rank-2 f64 tensor on `device`, whatever the device's default float type.
pub fn f64_tensor(values: &[f64], shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values.to_vec(), shape), (device, DType::F64))
}

/// The values of a tensor as f64.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.try_into_vec_as::<f64>().unwrap()
}

/// A synthetic MNIST split written as raw IDX files into a fresh temporary directory, removed
/// when dropped: for the tests that need *some* IDX digits (the loader, batching, training
/// loops), so that they run, and can fail, on a clone without the real data.
pub struct MnistFixture {
    /// The directory holding `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`.
    pub dir: std::path::PathBuf,
    /// The pixels written, `n·28·28` bytes, row-major.
    pub pixels: Vec<u8>,
    /// The label written for each image.
    pub labels: Vec<u8>,
}

impl MnistFixture {
    /// `n` synthetic 28×28 "digits" in `<tmp>/scorefield-fixture-<name>-<pid>`: image `i` has
    /// label `i mod 10`, a bright horizontal bar at a row set by its label and a vertical bar
    /// at a column set by `i`, on a faint gradient, so that no two neighbours are alike.
    pub fn write(name: &str, n: usize) -> Self {
        use scorefield::data::idx::{IdxArray, encode};
        const SIDE: usize = 28;
        let dir =
            std::env::temp_dir().join(format!("scorefield-fixture-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let mut pixels = Vec::with_capacity(n * SIDE * SIDE);
        for (i, &label) in labels.iter().enumerate() {
            let bar_row = 4 + 2 * label as usize;
            let bar_col = 6 + (i * 7) % 16;
            for r in 0..SIDE {
                for c in 0..SIDE {
                    let on_bar = (r == bar_row || r == bar_row + 1) && (4..24).contains(&c)
                        || (c == bar_col || c == bar_col + 1) && (4..24).contains(&r);
                    let value = if on_bar { 255 - (i % 7) } else { (r + c + i) % 29 };
                    pixels.push(value as u8);
                }
            }
        }
        let images = IdxArray { dims: vec![n, SIDE, SIDE], data: pixels.clone() };
        let label_file = IdxArray { dims: vec![n], data: labels.clone() };
        std::fs::write(dir.join("t10k-images-idx3-ubyte"), encode(&images)).unwrap();
        std::fs::write(dir.join("t10k-labels-idx1-ubyte"), encode(&label_file)).unwrap();
        MnistFixture { dir, pixels, labels }
    }
}

impl Drop for MnistFixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
