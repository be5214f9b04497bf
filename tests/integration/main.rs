//! The integration tests, one crate: end-to-end runs of the binary and of
//! the library on the committed fixtures (`fixtures/`), one module per area,
//! with the helpers they share in [`common`].

mod common;

mod align;
mod avg_cli;
mod bad_input;
mod basin;
mod basin_trained;
mod checkpoint_io;
mod completions;
mod corrupt_input;
mod ema_cli;
mod force_in_place;
mod hostile_cli;
mod hostile_inputs;
mod hostile_outputs;
mod hostile_specs;
mod input_forms;
mod inspect_cli;
mod interrupted_write;
mod output_layout;
mod plots;
mod progress;
mod properties;
mod recipe;
mod side_folders;
mod transformers;
mod write_roundtrip;
