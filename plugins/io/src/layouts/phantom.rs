//! Synthetic phantoms, deterministic from the pipeline's seed.

use super::{Found, Layout};
use crate::{phantom, LoadParams, PhantomKind};
use shapeflow_core::CaseData;

pub struct Phantoms {
    kind: PhantomKind,
    cases: usize,
    dims: [usize; 3],
    spacing: [f64; 3],
    noise: f64,
}

impl Phantoms {
    pub fn new(p: &LoadParams) -> Self {
        let (dims, spacing, noise) = match p.phantom {
            PhantomKind::HeadNeck => (
                p.dims.unwrap_or([96, 96, 80]),
                p.spacing.unwrap_or([2.5, 2.5, 3.0]),
                p.noise.unwrap_or(15.0),
            ),
            PhantomKind::Mri => (
                p.dims.unwrap_or([36, 48, 36]),
                p.spacing.unwrap_or([1.0, 1.0, 1.0]),
                p.noise.unwrap_or(0.04),
            ),
        };
        Phantoms {
            kind: p.phantom,
            cases: p.cases,
            dims,
            spacing,
            noise,
        }
    }
}

impl Layout for Phantoms {
    fn discover(&self, seed: u64) -> Result<Vec<Found>, String> {
        Ok((0..self.cases)
            .map(|i| Found {
                id: format!("phantom{i:03}"),
                split: None,
                labeled: true,
                fingerprint: format!("seed {seed} index {i}"),
            })
            .collect())
    }

    fn read(&self, seed: u64, id: &str) -> Result<CaseData, String> {
        let index: u64 = id
            .trim_start_matches("phantom")
            .parse()
            .map_err(|_| format!("bad phantom case id {id}"))?;
        Ok(match self.kind {
            PhantomKind::HeadNeck => phantom::head_neck(
                seed,
                index,
                phantom::HnSpec {
                    dims: self.dims,
                    spacing: self.spacing,
                    noise_hu: self.noise,
                },
            ),
            PhantomKind::Mri => phantom::mri(seed, index, self.dims, self.spacing, self.noise),
        })
    }

    fn uses_seed(&self) -> bool {
        true
    }
}
