use scorefield::{BackendKind, Error};

#[test]
fn flex_is_the_default_backend_and_parses_case_insensitively() {
    assert!(BackendKind::Flex.is_available());
    assert_eq!("FLEX".parse::<BackendKind>().unwrap(), BackendKind::Flex);
    let device = scorefield::device(" flex ").unwrap();
    let t = burn::tensor::Tensor::<1>::from_floats([1.0, 2.0], &device);
    assert_eq!(t.sum().into_scalar::<f32>(), 3.0);
}

#[test]
fn unknown_backend_is_a_typed_error() {
    assert_eq!(scorefield::device("tpu").unwrap_err(), Error::UnknownBackend("tpu".into()));
}

#[test]
fn backends_not_compiled_in_say_which_feature_to_enable() {
    for kind in BackendKind::ALL {
        if !kind.is_available() {
            assert_eq!(
                scorefield::device(kind.name()).unwrap_err(),
                Error::BackendNotCompiled { name: kind.name() }
            );
        }
    }
    let message = Error::BackendNotCompiled { name: "cuda" }.to_string();
    assert!(message.contains("--features cuda"), "{message}");
}
