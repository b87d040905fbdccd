//! How the examples end: `main` returns the exit code of `run`, printing an error with its
//! Display message on standard error.

use std::process::ExitCode;

/// What an example's `run` returns.
pub type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

/// `ExitCode::SUCCESS`, or the error printed as `error: …` and `ExitCode::FAILURE`.
pub fn exit_code(result: AnyResult<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
