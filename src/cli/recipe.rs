//! `polymerge recipe`: a mergekit recipe run with mergekit's numerics.

use std::process::ExitCode;

use polymerge::pipeline::{Align, MatchOptions, Merge};
use polymerge::recipe::{Recipe, RecipeAlign};
use serde_json::json;

use super::args::RecipeArgs;
use super::avg::open_all;
use super::console::{Console, GateText, refusal};
use super::output::{summarize, warn_nonfinite};

pub fn run(a: RecipeArgs) -> anyhow::Result<ExitCode> {
    let output = a.out.output();
    output.refuse_existing()?;
    let recipe = Recipe::load(&a.recipe)?;
    let paths = recipe.paths();
    let ckpts = open_all(&paths)?;
    let align = match recipe.align {
        RecipeAlign::None => Align::None,
        RecipeAlign::ToFirst => Align::ToFirst(MatchOptions::default()),
        RecipeAlign::Many => Align::Many(MatchOptions::default()),
    };
    let gate = GateText {
        labels: (paths.iter().enumerate())
            .map(|(i, p)| format!("models[{i}] ({})", p.display()))
            .collect(),
        aligned: recipe.align != RecipeAlign::None,
        strict: a.basin.strict_basin,
    };
    let description = json!({
        "command": "recipe",
        "version": polymerge::VERSION,
        "recipe": a.recipe.display().to_string(),
        "merge_method": "linear",
        "inputs": paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "weights": recipe.weights(),
        "normalize": recipe.normalize,
        "align": format!("{:?}", recipe.align).to_lowercase(),
    });
    let merge = Merge::new(&ckpts)
        .weights(recipe.weights())
        .numerics(recipe.numerics())
        .dtype(recipe.out_dtype)
        .strict_nonfinite(a.strict)
        .align(align)
        .basin_gate(a.basin.gate())
        .description(description);
    let console = Console::new(a.out.quiet(), "merging").with_gate(gate);
    let report = match merge.run(&output, &console) {
        Err(polymerge::Error::BasinRefused { pairs }) => {
            return Ok(refusal(&pairs, console.gate()));
        }
        r => r?,
    };
    warn_nonfinite(&report.nonfinite);
    summarize("merged", &a.out, &report, ckpts.len())?;
    Ok(ExitCode::SUCCESS)
}
