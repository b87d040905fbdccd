//! The MNIST loader and batching through the facade, on a synthetic IDX split written by the
//! test ([`MnistFixture`]): the pixels and labels written are the oracle.

use rand::SeedableRng;
use rand::rngs::StdRng;
use scorefield::data::mnist::{Mnist, MnistError, SIDE, Split};

use crate::common::{MnistFixture, flex, values};

const PX: usize = SIDE * SIDE;

#[test]
fn the_loader_returns_the_written_pixels_labels_and_batches() {
    let fixture = MnistFixture::write("loader", 12);
    let mnist = Mnist::load(&fixture.dir).unwrap();
    assert_eq!((mnist.split, mnist.len()), (Split::Test, 12));
    assert_eq!((&mnist.images, &mnist.labels), (&fixture.pixels, &fixture.labels));
    let picks = [11, 0, 11, 4];
    assert_eq!(mnist.labels_of(&picks).unwrap(), [1, 0, 1, 4]);

    let x = mnist.images(&picks, &flex()).unwrap();
    assert_eq!(x.dims(), [4, 1, SIDE, SIDE]);
    let want: Vec<f64> = picks
        .iter()
        .flat_map(|&i| &fixture.pixels[i * PX..(i + 1) * PX])
        .map(|&p| f64::from(p as f32 / 255.0))
        .collect();
    assert_eq!(values(x), want);

    // Dequantised: each value in its pixel's bin [p/256, (p+1)/256), the jitter not constant.
    let d = values(mnist.batch(&picks, &flex(), &mut StdRng::seed_from_u64(3)).unwrap());
    let mut jitter = Vec::new();
    for (k, &y) in d.iter().enumerate() {
        let p = f64::from(fixture.pixels[picks[k / PX] * PX + k % PX]);
        assert!(y >= p / 256.0 && y < (p + 1.0) / 256.0, "{y} not in the bin of {p}");
        jitter.push(y * 256.0 - p);
    }
    let mean = jitter.iter().sum::<f64>() / jitter.len() as f64;
    assert!((mean - 0.5).abs() < 0.02, "mean jitter {mean}, expected U(0, 1)");
}

#[test]
fn an_out_of_range_index_is_a_typed_error_through_the_facade() {
    let fixture = MnistFixture::write("range", 5);
    let mnist = Mnist::load(&fixture.dir).unwrap();
    let err = mnist.images(&[0, 5], &flex()).unwrap_err();
    assert!(matches!(err, MnistError::IndexOutOfRange { index: 5, len: 5 }), "{err}");
    let err = mnist.batch(&[9], &flex(), &mut StdRng::seed_from_u64(0)).unwrap_err();
    assert!(matches!(err, MnistError::IndexOutOfRange { index: 9, len: 5 }), "{err}");
}
