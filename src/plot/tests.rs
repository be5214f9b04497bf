//! Rendering checks: every series comes out as one polyline whose points
//! are an affine image of the data.

use super::*;

/// `(stroke colour, points)` of every `<polyline>` in `svg`.
pub(crate) fn polylines(svg: &str) -> Vec<(String, Vec<(f64, f64)>)> {
    svg.split("<polyline")
        .skip(1)
        .map(|el| {
            let el = &el[..el.find("/>").unwrap_or(el.len())];
            let attr = |name: &str| {
                let key = format!("{name}=\"");
                el.find(&key).map(|i| {
                    let rest = &el[i + key.len()..];
                    rest[..rest.find('"').unwrap()].to_string()
                })
            };
            let points = attr("points")
                .unwrap_or_default()
                .split_whitespace()
                .map(|p| {
                    let (x, y) = p.split_once(',').unwrap();
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect();
            (attr("stroke").unwrap_or_default(), points)
        })
        .collect()
}

/// The trimmed contents of every `<text>` element.
pub(crate) fn texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|el| {
            let body = &el[el.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim().to_string())
        })
        .collect()
}

/// Whether pixel coordinates `px` are `a + b·v` of `values` (b ≠ 0) to
/// within `tol` pixels.
pub(crate) fn affine(px: &[f64], values: &[f64], tol: f64) -> bool {
    // Fit through the smallest and the largest value (best conditioned).
    let by = |f: fn(f64, f64) -> bool| {
        (0..values.len())
            .reduce(|k, m| if f(values[m], values[k]) { m } else { k })
            .unwrap()
    };
    let (i, j) = (by(|a, b| a < b), by(|a, b| a > b));
    if values[i] == values[j] {
        return px.iter().all(|p| (p - px[0]).abs() <= tol);
    }
    let b = (px[j] - px[i]) / (values[j] - values[i]);
    let a = px[i] - b * values[i];
    b != 0.0
        && px
            .iter()
            .zip(values)
            .all(|(p, v)| (a + b * v - p).abs() <= tol)
}

#[test]
fn each_series_is_one_polyline_whose_points_follow_the_data() {
    let loss = vec![0.08, 0.2, 0.45, 0.21, 0.079];
    let acc = vec![0.97, 0.9, 0.6, 0.91, 0.98];
    let xs = [0.0, 0.25, 0.5, 0.75, 1.0];
    let panel = |title: &str, ys: &[f64]| Panel {
        title: title.into(),
        x_label: "alpha".into(),
        y_label: title.into(),
        series: vec![Series {
            label: "naive".into(),
            points: xs.iter().copied().zip(ys.iter().copied()).collect(),
        }],
        x_names: None,
    };
    let svg = render_svg(&[panel("loss", &loss), panel("accuracy", &acc)]).unwrap();
    assert!(svg.starts_with("<svg"));
    let t = texts(&svg);
    assert!(
        t.contains(&"loss".into()) && t.contains(&"alpha".into()),
        "{t:?}"
    );
    let lines: Vec<_> = polylines(&svg)
        .into_iter()
        .filter(|(_, p)| p.len() == 5)
        .collect();
    assert_eq!(lines.len(), 2, "one 5-point polyline per panel");
    for ((_, pts), ys) in lines.iter().zip([&loss, &acc]) {
        let px: Vec<f64> = pts.iter().map(|p| p.0).collect();
        let py: Vec<f64> = pts.iter().map(|p| p.1).collect();
        assert!(affine(&px, &xs, 1.5), "x pixels {px:?}");
        assert!(affine(&py, ys, 1.5), "y pixels {py:?} for {ys:?}");
        // SVG's y grows downwards: the highest value is the smallest pixel.
        let top = ys.iter().cloned().fold(f64::MIN, f64::max);
        let k = ys.iter().position(|v| *v == top).unwrap();
        assert_eq!(py.iter().cloned().fold(f64::MAX, f64::min), py[k]);
    }
}

#[test]
fn two_series_get_two_colours_and_a_legend() {
    let s = |label: &str, ys: [f64; 3]| Series {
        label: label.into(),
        points: (0..3).map(|i| i as f64).zip(ys).collect(),
    };
    let svg = render_svg(&[Panel {
        title: "cos".into(),
        series: vec![s("before", [0.1, 0.2, 0.3]), s("after", [0.9, 0.8, 0.95])],
        x_names: Some(vec!["fc1".into(), "fc2".into(), "fc3".into()]),
        ..Panel::default()
    }])
    .unwrap();
    let lines: Vec<_> = polylines(&svg)
        .into_iter()
        .filter(|(_, p)| p.len() == 3)
        .collect();
    assert_eq!(lines.len(), 2);
    assert_ne!(lines[0].0, lines[1].0);
    let t = texts(&svg);
    for name in ["before", "after", "fc1", "fc3"] {
        assert!(t.contains(&name.to_string()), "{name} not in {t:?}");
    }
}

#[test]
fn non_finite_values_are_left_out_of_the_line() {
    let svg = render_svg(&[Panel {
        series: vec![Series {
            label: String::new(),
            points: vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 3.0)],
        }],
        ..Panel::default()
    }])
    .unwrap();
    let n: Vec<usize> = polylines(&svg).iter().map(|(_, p)| p.len()).collect();
    assert!(n.contains(&2) && !n.contains(&3), "{n:?}");
}

#[test]
fn a_plot_path_must_end_in_svg_and_exist_only_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("p.png");
    assert!(matches!(
        check_target(&png, true),
        Err(Error::Output {
            source: OutputError::NotSvg,
            ..
        })
    ));
    let svg = dir.path().join("p.svg");
    check_target(&svg, false).unwrap();
    std::fs::write(&svg, "old").unwrap();
    assert!(matches!(
        check_target(&svg, false),
        Err(Error::Output {
            source: OutputError::Exists,
            ..
        })
    ));
    check_target(&svg, true).unwrap();
    let sub = dir.path().join("d.svg");
    std::fs::create_dir(&sub).unwrap();
    assert!(check_target(&sub, true).is_err());
    let missing = dir.path().join("no/p.svg");
    assert!(matches!(
        check_target(&missing, false),
        Err(Error::Output {
            source: OutputError::NoDirectory(_),
            ..
        })
    ));
}

#[test]
fn saving_replaces_the_file_whole_and_leaves_no_temporary() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("p.svg");
    std::fs::write(&svg, "old").unwrap();
    let panel = Panel {
        series: vec![Series {
            label: "w".into(),
            points: vec![(0.0, 0.5), (1.0, 0.5)],
        }],
        ..Panel::default()
    };
    assert!(save(&svg, std::slice::from_ref(&panel), false).is_err());
    assert_eq!(std::fs::read_to_string(&svg).unwrap(), "old");
    save(&svg, &[panel], true).unwrap();
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
