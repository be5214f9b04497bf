pub mod ema;
pub mod error;
pub use error::{Error, Result};
