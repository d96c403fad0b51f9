//! The Medical Segmentation Decathlon / nnU-Net v1 raw layout: `dataset.json`,
//! `imagesTr/`, `labelsTr/`.

use super::{Found, Layout};
use crate::datasets;
use shapeflow_core::CaseData;
use std::collections::BTreeMap;
use std::path::PathBuf;

pub struct Msd {
    root: PathBuf,
    merge: BTreeMap<String, Vec<u8>>,
    allow_outside: bool,
}

impl Msd {
    pub fn new(root: PathBuf, merge: BTreeMap<String, Vec<u8>>, allow_outside: bool) -> Self {
        Msd {
            root,
            merge,
            allow_outside,
        }
    }

    /// (organ name, source label values) after `merge`; default one organ per label.
    fn organs(&self, ds: &datasets::MsdDataset) -> Vec<(String, Vec<u8>)> {
        if self.merge.is_empty() {
            ds.labels
                .iter()
                .map(|(v, n)| (n.clone(), vec![*v]))
                .collect()
        } else {
            self.merge
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect()
        }
    }
}

impl Layout for Msd {
    fn discover(&self, _seed: u64) -> Result<Vec<Found>, String> {
        let ds = datasets::msd_dataset(&self.root, self.allow_outside)?;
        let tests = ds.tests.into_iter().map(|(id, images)| Found {
            labeled: false,
            fingerprint: datasets::fingerprint(&self.root, &images),
            id,
            split: None,
        });
        Ok(ds
            .cases
            .into_iter()
            .map(|c| Found {
                labeled: true,
                fingerprint: datasets::fingerprint(&self.root, &c.files()),
                id: c.id,
                split: None,
            })
            .chain(tests)
            .collect())
    }

    fn read(&self, _seed: u64, id: &str) -> Result<CaseData, String> {
        let ds = datasets::msd_dataset(&self.root, self.allow_outside)?;
        let organs = self.organs(&ds);
        if let Some((_, images)) = ds.tests.iter().find(|(t, _)| t == id) {
            let names: Vec<String> = organs.iter().map(|(n, _)| n.clone()).collect();
            return datasets::load_unlabeled(images, &names);
        }
        let c = ds
            .cases
            .iter()
            .find(|c| c.id == id)
            .ok_or_else(|| format!("case {id} vanished from dataset.json"))?;
        datasets::load_msd(c, &organs)
    }
}
