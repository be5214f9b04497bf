pub mod assignment;
pub mod error;
pub use error::{Error, Result};
