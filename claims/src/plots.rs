//! Each [`Table`] as a grouped bar chart, in SVG (plotters' SVG backend: no font or bitmap
//! libraries, and a text file that diffs).

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::figures::Table;

/// Colours for the series, in order (colour-blind-safe: Okabe-Ito).
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(240, 228, 66),
    RGBColor(0, 0, 0),
];

#[derive(Debug, thiserror::Error)]
#[error("cannot draw {path}: {message}")]
pub struct PlotError {
    pub path: PathBuf,
    pub message: String,
}

/// Draws `table` to `dir/<id>.svg` and returns the path.
pub fn draw(dir: &Path, table: &Table) -> Result<PathBuf, PlotError> {
    let path = dir.join(format!("{}.svg", table.id));
    let fail = |e: &dyn std::fmt::Display| PlotError {
        path: path.clone(),
        message: e.to_string(),
    };
    let groups = table.groups.len().max(1);
    let series = table.series.len().max(1);
    let width = (160 + groups * (40 + series * 26)).clamp(640, 1600) as u32;
    let root = SVGBackend::new(&path, (width, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let top = table
        .values
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let y_max = if top > 0.0 { top * 1.15 } else { 1.0 };
    let mut chart = ChartBuilder::on(&root)
        .caption(&table.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(70)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..groups as f64, 0f64..y_max)
        .map_err(|e| fail(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(table.unit)
        .draw()
        .map_err(|e| fail(&e))?;
    let slot = 0.8 / series as f64;
    for (si, name) in table.series.iter().enumerate() {
        let color = PALETTE[si % PALETTE.len()];
        let bars = table.values[si]
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(gi, v)| {
                let x0 = gi as f64 + 0.1 + si as f64 * slot;
                Rectangle::new([(x0, 0.0), (x0 + slot * 0.9, *v)], color.filled())
            });
        chart
            .draw_series(bars)
            .map_err(|e| fail(&e))?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    for (gi, group) in table.groups.iter().enumerate() {
        let (px, py) = chart.backend_coord(&(gi as f64 + 0.5, 0.0));
        root.draw(&Text::new(
            group.clone(),
            (px - (group.len() as i32 * 3), py + 10),
            ("sans-serif", 12),
        ))
        .map_err(|e| fail(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))?;
    drop(chart);
    drop(root);
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_becomes_an_svg_with_its_labels() {
        let dir = tempfile::tempdir().unwrap();
        let t = Table {
            id: "t",
            title: "Title".into(),
            unit: "KiB",
            groups: vec!["seq-read-buffered".into(), "seq-write-buffered".into()],
            series: vec!["qcow2-thin".into(), "raw-sparse".into()],
            values: vec![vec![128.0, 64.0], vec![f64::NAN, 32.0]],
        };
        let path = draw(dir.path(), &t).unwrap();
        let svg = std::fs::read_to_string(path).unwrap();
        assert!(svg.starts_with("<svg"));
        for label in [
            "Title",
            "seq-read-buffered",
            "qcow2-thin",
            "raw-sparse",
            "KiB",
        ] {
            assert!(svg.contains(label), "{label} missing");
        }
        // Three finite values, three bars (+ the legend's two swatches and the background).
        assert!(svg.matches("<rect").count() >= 5);
    }
}
