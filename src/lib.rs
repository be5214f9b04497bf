pub mod error;
pub mod assignment;
pub use error::{Error, Result};
