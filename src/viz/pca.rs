//! Principal component analysis down to two dimensions, to draw high-dimensional vectors
//! (encoder states, embeddings) as a scatter plot.

use anyhow::{Context, Result, bail};
use tch::{Device, Kind, Tensor};

/// One `(x, y)` point per input vector, and the fraction of the total variance explained by
/// each of the two components.
pub type Projection = (Vec<(f32, f32)>, [f64; 2]);

/// Centres `vectors` (`[n, d]`, one vector per row) and projects them onto their first two
/// principal components: one `(x, y)` point per row and the fraction of the total variance each
/// component explains.
///
/// The sign of each component is fixed so that its largest-magnitude loading is positive, so the
/// same data always gives the same picture. With `d == 1` the second coordinate is 0; when every
/// row is the same the points are all at the origin and both fractions are 0.
pub fn project_2d(vectors: &Tensor) -> Result<Projection> {
    let (n_vectors, n_dims) = match vectors.size()[..] {
        [n_vectors, n_dims] => (n_vectors, n_dims),
        ref shape => bail!("PCA takes a [vectors, dimensions] matrix, got shape {shape:?}"),
    };
    if n_vectors < 2 {
        bail!("PCA needs at least 2 vectors, got {n_vectors}");
    }
    if n_dims < 1 {
        bail!("PCA needs vectors with at least 1 dimension, got {n_dims}");
    }
    // Double precision on the CPU: the sizes plotted are small, and the ratios stay accurate.
    let data = vectors.to_device(Device::Cpu).f_to_kind(Kind::Double).context("PCA takes numeric vectors")?;
    if !bool::try_from(data.isfinite().all()).context("cannot check the vectors for NaN")? {
        bail!("PCA input holds NaN or infinite values");
    }
    let centred = &data - data.mean_dim(0, true, Kind::Double);
    // `svd` rather than `linalg_svd`: tch passes linalg_svd a `driver`, which the CPU rejects.
    // Its V holds the principal directions as columns.
    let (_, singular_values, directions) =
        centred.f_svd(true, true).context("the singular value decomposition failed")?;

    let n_components = directions.size()[1].min(2);
    let components = directions.narrow(1, 0, n_components).tr();
    // A component is a unit vector, so its largest loading is never 0 and its sign is ±1.
    let largest_loadings = components.gather(1, &components.abs().argmax(1, true), false);
    let components = &components * largest_loadings.sign();
    let projected = centred.matmul(&components.tr()).contiguous();
    let coordinates = Vec::<f64>::try_from(projected.flatten(0, -1)).context("cannot read the projection")?;

    let points = coordinates
        .chunks(n_components as usize)
        .map(|row| (row[0] as f32, row.get(1).copied().unwrap_or(0.0) as f32))
        .collect();
    Ok((points, explained_variance_ratio(&singular_values)?))
}

/// Each of the first two components' share of the total variance (squared singular values).
fn explained_variance_ratio(singular_values: &Tensor) -> Result<[f64; 2]> {
    let variances: Vec<f64> =
        Vec::<f64>::try_from(singular_values.square()).context("cannot read the singular values")?;
    let total: f64 = variances.iter().sum();
    if total <= 0.0 {
        return Ok([0.0, 0.0]);
    }
    let share = |index: usize| variances.get(index).map_or(0.0, |variance| variance / total);
    Ok([share(0), share(1)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(rows: &[&[f64]]) -> Tensor {
        let n_dims = rows[0].len() as i64;
        let flat: Vec<f64> = rows.iter().flat_map(|row| row.iter().copied()).collect();
        Tensor::from_slice(&flat).reshape([rows.len() as i64, n_dims]).to_kind(Kind::Float)
    }

    fn assert_close(actual: f64, expected: f64, tolerance: f64) {
        assert!((actual - expected).abs() <= tolerance, "{actual} is not within {tolerance} of {expected}");
    }

    #[test]
    fn points_on_a_line_in_5d_need_one_component() {
        let direction = [1.0, -2.0, 0.5, 3.0, 0.0];
        let offset = [10.0, 0.0, -4.0, 1.0, 7.0];
        let ts = [-2.0, -0.5, 0.0, 1.0, 3.5, 4.0];
        let rows: Vec<Vec<f64>> =
            ts.iter().map(|t| direction.iter().zip(offset).map(|(d, o)| o + t * d).collect()).collect();
        let row_refs: Vec<&[f64]> = rows.iter().map(Vec::as_slice).collect();

        let (points, ratios) = project_2d(&matrix(&row_refs)).expect("a 6x5 matrix projects");

        assert_close(ratios[0], 1.0, 1e-6);
        assert_close(ratios[1], 0.0, 1e-6);
        // The first coordinate is the signed distance along the line from the mean; the largest
        // loading (3.0, positive) fixes the sign to follow t.
        let norm = direction.iter().map(|d| d * d).sum::<f64>().sqrt();
        let mean_t = ts.iter().sum::<f64>() / ts.len() as f64;
        for ((x, y), t) in points.iter().zip(ts) {
            assert_close(f64::from(*x), (t - mean_t) * norm, 1e-4);
            assert_close(f64::from(*y), 0.0, 1e-4);
        }
    }

    #[test]
    fn a_rotated_2d_cloud_is_recovered_up_to_sign() {
        // Centred points whose principal axes are x and y (no x-y covariance), rotated by 30°.
        let original = [(2.0, 0.5), (-2.0, 0.5), (2.0, -0.5), (-2.0, -0.5), (3.0, 0.0), (-3.0, 0.0)];
        let (sin, cos) = 30f64.to_radians().sin_cos();
        let rotated: Vec<[f64; 2]> = original.iter().map(|&(x, y)| [cos * x - sin * y, sin * x + cos * y]).collect();
        let row_refs: Vec<&[f64]> = rotated.iter().map(|row| row.as_slice()).collect();

        let (points, ratios) = project_2d(&matrix(&row_refs)).expect("a 6x2 matrix projects");

        let variance = |f: fn(&(f64, f64)) -> f64| original.iter().map(f).map(|v| v * v).sum::<f64>();
        let (var_x, var_y) = (variance(|p| p.0), variance(|p| p.1));
        assert_close(ratios[0], var_x / (var_x + var_y), 1e-6);
        assert_close(ratios[1], var_y / (var_x + var_y), 1e-6);
        let sign_x = f64::from(points[0].0).signum();
        let sign_y = f64::from(points[0].1).signum();
        for (&(x, y), &(expected_x, expected_y)) in points.iter().zip(&original) {
            assert_close(f64::from(x), sign_x * expected_x, 1e-5);
            assert_close(f64::from(y), sign_y * expected_y, 1e-5);
        }
    }

    #[test]
    fn the_sign_convention_makes_the_largest_loading_positive() {
        // Spread along x: the solver may return (1, 0) or (-1, 0) as the first component; the
        // convention picks (1, 0), so the first coordinate is the centred x, for the data and for
        // its mirror image alike.
        let rows: [&[f64]; 3] = [&[-3.0, 0.1], &[0.0, -0.2], &[3.0, 0.1]];
        for mirror in [1.0, -1.0] {
            let (points, _) = project_2d(&(matrix(&rows) * mirror)).expect("a 3x2 matrix projects");
            for (point, row) in points.iter().zip(rows) {
                assert_close(f64::from(point.0), mirror * row[0], 1e-5);
            }
        }
    }

    #[test]
    fn one_dimension_gives_a_zero_second_coordinate() {
        let rows: [&[f64]; 3] = [&[1.0], &[2.0], &[6.0]];
        let (points, ratios) = project_2d(&matrix(&rows)).expect("a 3x1 matrix projects");
        assert_eq!(ratios, [1.0, 0.0]);
        let xs: Vec<f32> = points.iter().map(|p| p.0).collect();
        assert_eq!(xs, [-2.0, -1.0, 3.0]);
        assert!(points.iter().all(|p| p.1 == 0.0));
    }

    #[test]
    fn identical_vectors_sit_at_the_origin() {
        let rows: [&[f64]; 3] = [&[1.0, 2.0, 3.0]; 3];
        let (points, ratios) = project_2d(&matrix(&rows)).expect("constant rows project");
        assert_eq!(ratios, [0.0, 0.0]);
        assert!(points.iter().all(|&(x, y)| x.abs() < 1e-6 && y.abs() < 1e-6), "{points:?}");
    }

    #[test]
    fn too_few_rows_or_columns_and_bad_values_are_errors() {
        let one_row = matrix(&[&[1.0, 2.0]]);
        assert!(format!("{:#}", project_2d(&one_row).expect_err("one row")).contains("at least 2 vectors"));
        let no_columns = Tensor::zeros([3, 0], (Kind::Float, Device::Cpu));
        assert!(format!("{:#}", project_2d(&no_columns).expect_err("no columns")).contains("at least 1 dimension"));
        let flat = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        assert!(format!("{:#}", project_2d(&flat).expect_err("1-D input")).contains("shape"));
        let with_nan = matrix(&[&[1.0, f64::NAN], &[2.0, 3.0]]);
        assert!(format!("{:#}", project_2d(&with_nan).expect_err("NaN input")).contains("NaN"));
    }
}
