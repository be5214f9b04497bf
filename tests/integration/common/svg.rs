//! Reading back the SVG plots polymerge draws: the polylines (one per
//! plotted series) and the texts, parsed without polymerge's code.

/// `(stroke colour, points)` of every `<polyline>` in `svg`, in document
/// order.
pub fn polylines(svg: &str) -> Vec<(String, Vec<(f64, f64)>)> {
    svg.split("<polyline")
        .skip(1)
        .map(|el| {
            let el = &el[..el.find("/>").expect("closed polyline")];
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
                    let (x, y) = p.split_once(',').expect("x,y");
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect();
            (attr("stroke").unwrap_or_default(), points)
        })
        .collect()
}

/// The polylines drawn in a colour other than black (the axes and ticks are
/// black): the data series.
pub fn series(svg: &str) -> Vec<Vec<(f64, f64)>> {
    polylines(svg)
        .into_iter()
        .filter(|(stroke, _)| stroke != "#000000")
        .map(|(_, p)| p)
        .collect()
}

/// The trimmed contents of every `<text>` element.
pub fn texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .filter_map(|el| {
            let body = &el[el.find('>')? + 1..];
            Some(body[..body.find("</text>")?].trim().to_string())
        })
        .collect()
}

/// Asserts that pixel coordinates `px` are one affine image `a + b·v`
/// (b ≠ 0) of `values`, to within 1.5 px (coordinates are whole pixels).
pub fn assert_affine(px: &[f64], values: &[f64], what: &str) {
    assert_eq!(px.len(), values.len(), "{what}: point count");
    let arg = |better: fn(f64, f64) -> bool| {
        (0..values.len())
            .reduce(|k, m| if better(values[m], values[k]) { m } else { k })
            .unwrap()
    };
    let (i, j) = (arg(|a, b| a < b), arg(|a, b| a > b));
    assert!(values[j] > values[i], "{what}: constant values");
    let b = (px[j] - px[i]) / (values[j] - values[i]);
    let a = px[i] - b * values[i];
    assert!(b != 0.0, "{what}: flat");
    for (k, (p, v)) in px.iter().zip(values).enumerate() {
        assert!(
            (a + b * v - p).abs() <= 1.5,
            "{what}: point {k} at {p} px, value {v} maps to {} px",
            a + b * v
        );
    }
}
