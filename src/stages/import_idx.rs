//! `vlal import-idx`: an IDX image/label pair (MNIST, Fashion-MNIST) written as the image folder
//! `extract --images` reads: `OUT/<split>/<label:02>/<split>-<index:05>.png`. Class folders are
//! named by label id, so `extract --classes` maps them to the class file's lines in order.
//!
//! `--calib N` moves a seeded random N of the images to `OUT/calib/`; `--exclude N --exclude-to
//! DIR` writes another N to `DIR/<label:02>/` and leaves them out of `OUT` (data kept apart from
//! the pool, e.g. to fit a teacher "trained elsewhere"). Every folder is written under a
//! temporary name and renamed when complete; folders that exist already are left as they are.

use crate::{idx, progress, rng};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, clap::Args)]
pub struct ImportIdxArgs {
    /// IDX images (N × H × W unsigned bytes, e.g. train-images-idx3-ubyte.gz).
    #[arg(long)]
    pub images: PathBuf,
    /// IDX labels (N unsigned bytes).
    #[arg(long)]
    pub labels: PathBuf,
    /// Output image folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Split folder of these images: train or test.
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Images moved to OUT/calib (seeded random choice).
    #[arg(long, default_value_t = 0)]
    pub calib: usize,
    /// Images written to --exclude-to instead of OUT (seeded random choice, disjoint from calib).
    #[arg(long, default_value_t = 0)]
    pub exclude: usize,
    #[arg(long)]
    pub exclude_to: Option<PathBuf>,
    /// Keep only a seeded random N of the remaining images in OUT/<split> (0: all), for a
    /// smaller pool or test split.
    #[arg(long, default_value_t = 0)]
    pub keep: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Leave out the first N images of the seeded order before calib, exclude and keep: with
    /// the same seed, N = the calib + exclude + keep of an earlier import gives images disjoint
    /// from it (the ALOR demo's corpus images).
    #[arg(long, default_value_t = 0)]
    pub skip: usize,
}

pub fn run(a: &ImportIdxArgs) -> Result<()> {
    if !["train", "test"].contains(&a.split.as_str()) {
        bail!("--split must be train or test (got '{}')", a.split);
    }
    if a.exclude > 0 && a.exclude_to.is_none() {
        bail!("--exclude needs --exclude-to DIR");
    }
    let images = idx::read(&a.images)?;
    let labels = idx::read(&a.labels)?;
    if images.dims.len() != 3 {
        bail!(
            "{}: images must be N × H × W, the file is {:?}",
            a.images.display(),
            images.dims
        );
    }
    if labels.dims.len() != 1 || labels.len() != images.len() {
        bail!(
            "{}: {:?} labels for {} images in {}",
            a.labels.display(),
            labels.dims,
            images.len(),
            a.images.display()
        );
    }
    let n = images.len();
    if a.skip + a.calib + a.exclude >= n {
        bail!(
            "--skip {} + --calib {} + --exclude {} leave no {} images of {n}",
            a.skip,
            a.calib,
            a.exclude,
            a.split
        );
    }
    // a seeded permutation: its first `calib` go to calib, the next `exclude` out of the pool,
    // the next `keep` (or all the rest) to the split
    let mut order: Vec<usize> = (0..n).collect();
    rng::shuffle(&mut order, &mut rng::stream(a.seed, "import-idx", 0));
    let mut dest = vec![3u8; n]; // 0 = split, 1 = calib, 2 = excluded, 3 = left out
    let kept = if a.keep == 0 {
        n - a.skip
    } else {
        a.calib + a.exclude + a.keep
    };
    for (pos, &i) in order.iter().skip(a.skip).enumerate().take(kept) {
        dest[i] = if pos < a.calib {
            1
        } else if pos < a.calib + a.exclude {
            2
        } else {
            0
        };
    }
    let targets: Vec<(u8, PathBuf)> = [
        (0, Some(a.out.join(&a.split))),
        (1, (a.calib > 0).then(|| a.out.join("calib"))),
        (2, a.exclude_to.clone().filter(|_| a.exclude > 0)),
    ]
    .into_iter()
    .filter_map(|(k, p)| p.map(|p| (k, p)))
    .collect();
    let (h, w) = (images.dims[1] as u32, images.dims[2] as u32);
    for (kind, dir) in targets {
        if dir.exists() {
            progress::log(format!("{}: exists, left as it is", dir.display()));
            continue;
        }
        let rows: Vec<usize> = (0..n).filter(|&i| dest[i] == kind).collect();
        write_folder(&dir, &rows, &images, &labels, h, w, &a.split)?;
        progress::log(format!("wrote {} ({} images)", dir.display(), rows.len()));
    }
    Ok(())
}

/// The images `rows` as `dir/<label:02>/<split>-<index:05>.png`, staged then renamed.
fn write_folder(
    dir: &Path,
    rows: &[usize],
    images: &idx::Idx,
    labels: &idx::Idx,
    h: u32,
    w: u32,
    split: &str,
) -> Result<()> {
    let tmp = crate::table::StagedDir::new(dir, "import")?;
    let pb = progress::bar(rows.len() as u64, "images");
    for &i in rows {
        let class = tmp.path().join(format!("{:02}", labels.item(i)[0]));
        if !class.exists() {
            std::fs::create_dir_all(&class)?;
        }
        let img = image::GrayImage::from_raw(w, h, images.item(i).to_vec())
            .expect("an item holds H × W bytes");
        let path = class.join(format!("{split}-{i:05}.png"));
        img.save(&path)
            .with_context(|| format!("{}: cannot write", path.display()))?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    tmp.commit()
}
