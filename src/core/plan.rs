//! Which items a run needs, their cache keys, and why each would be computed.
//!
//! Keys are known before anything runs: a source's item key hashes its case fingerprint,
//! every other item key hashes its stage's plugin, version and params with the keys of the
//! items it reads. So `plan` can say what a run will do without running it.

use crate::resolve::Resolved;
use crate::stage::{CancelToken, CaseInfo, Shape, StageCtx};
use shapeflow_cache::{Cache, CacheKey};
use std::collections::{BTreeMap, HashSet};

/// The case id of whole-dataset items.
pub const ALL_CASES: &str = "*";

/// One item a node produces.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PlannedItem {
    pub case: CaseInfo,
    pub key: CacheKey,
    /// Hash of what the item reads (input keys, or the source fingerprint).
    pub inputs: CacheKey,
}

/// Items of one node, in case order (a single `*` item for a gather stage).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct NodePlan {
    pub items: Vec<PlannedItem>,
    /// Gather stages: the cases whose inputs the single item reads.
    pub members: Vec<CaseInfo>,
}

/// Every node's items.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    pub nodes: Vec<NodePlan>,
}

/// Why an item will be computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Found in the cache.
    Cached,
    /// No earlier run computed this stage for this case.
    NewCase,
    /// The stage's params changed.
    ParamsChanged,
    /// An input changed (upstream item or source data).
    InputChanged,
    /// The plugin's version changed.
    VersionChanged,
    /// Same key as last time, but the cache no longer has it (evicted or corrupt).
    NotInCache,
    /// The stage is not cached: computed every run.
    Uncached,
}

impl Reason {
    pub fn describe(self) -> &'static str {
        match self {
            Reason::Cached => "cached",
            Reason::NewCase => "new case",
            Reason::ParamsChanged => "params changed",
            Reason::InputChanged => "input changed",
            Reason::VersionChanged => "stage version changed",
            Reason::NotInCache => "not in cache",
            Reason::Uncached => "not cached",
        }
    }
}

/// What the last run recorded for a (stage, variant, case).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ItemRecord {
    pub key: String,
    pub version: u32,
    pub params: String,
    pub inputs: String,
}

pub fn record_name(pipeline: &str, stage: &str, variant: &str, case: &str) -> String {
    format!("{pipeline}\u{1f}{stage}\u{1f}{variant}\u{1f}{case}")
}

fn params_hash(p: &serde_json::Value) -> String {
    CacheKey::of(p.to_string().as_bytes()).to_hex()
}

/// Computes every item key. Calls each source's `discover` (cheap by contract).
pub fn make_plan(resolved: &Resolved, cancel: &CancelToken) -> Result<Plan, String> {
    let scratch = std::env::temp_dir();
    let mut plans: Vec<NodePlan> = Vec::with_capacity(resolved.nodes.len());
    for node in &resolved.nodes {
        let mut hbase = blake3::Hasher::new();
        hbase.update(b"shapeflow-item-v1\0");
        hbase.update(node.plugin.as_bytes());
        hbase.update(&node.version.to_le_bytes());
        hbase.update(node.keyed.to_string().as_bytes());
        let seed = node.seed;
        if node.stage.uses_seed() {
            hbase.update(&seed.to_le_bytes());
        }
        hbase.update(node.stage.key_material().as_bytes());
        let finish = |extra: &[u8], inputs: CacheKey| -> CacheKey {
            let mut h = hbase.clone();
            h.update(extra);
            h.update(inputs.to_hex().as_bytes());
            CacheKey::of(h.finalize().as_bytes())
        };
        let global_inputs: Vec<CacheKey> = node
            .deps
            .iter()
            .filter(|&&d| resolved.nodes[d].shape == Shape::Gather)
            .filter_map(|&d| plans[d].items.first().map(|i| i.key))
            .collect();
        let per_case_deps: Vec<usize> = node
            .deps
            .iter()
            .copied()
            .filter(|&d| resolved.nodes[d].shape != Shape::Gather)
            .collect();
        let mut members = Vec::new();
        let items = match node.shape {
            Shape::Source => {
                let ctx = StageCtx {
                    base_dir: resolved.file.base_dir(),
                    stage_id: &node.id,
                    seed,
                    scratch: scratch.clone(),
                    run_dir: scratch.clone(),
                    output_dir: scratch.clone(),
                    work_dir: scratch.clone(),
                    cancel,
                    progress: Default::default(),
                };
                let cases = node
                    .stage
                    .discover(&ctx)
                    .map_err(|e| format!("stage `{}` ({}): {e}", node.id, node.plugin))?;
                let mut seen = HashSet::new();
                let mut items = Vec::new();
                for c in cases {
                    if !seen.insert(c.id.clone()) {
                        return Err(format!(
                            "stage `{}` ({}) found case `{}` twice",
                            node.id, node.plugin, c.id
                        ));
                    }
                    if !node.stage.accepts(&c) {
                        continue;
                    }
                    let inputs = CacheKey::of(format!("{}\0{}", c.id, c.fingerprint).as_bytes());
                    items.push(PlannedItem {
                        key: finish(c.id.as_bytes(), inputs),
                        case: c,
                        inputs,
                    });
                }
                items
            }
            Shape::PerCase | Shape::Gather => {
                // Cases present in every per-case input, in the first input's order.
                let key_maps: Vec<BTreeMap<&str, CacheKey>> = per_case_deps
                    .iter()
                    .map(|&d| {
                        plans[d]
                            .items
                            .iter()
                            .map(|i| (i.case.id.as_str(), i.key))
                            .collect()
                    })
                    .collect();
                let first = per_case_deps.first().map(|&d| &plans[d].items);
                let cases: Vec<(CaseInfo, Vec<CacheKey>)> = first
                    .into_iter()
                    .flatten()
                    .filter(|it| node.stage.accepts(&it.case))
                    .filter_map(|it| {
                        let keys: Option<Vec<CacheKey>> = key_maps
                            .iter()
                            .map(|m| m.get(it.case.id.as_str()).copied())
                            .collect();
                        keys.map(|k| (it.case.clone(), k))
                    })
                    .collect();
                if node.shape == Shape::PerCase {
                    cases
                        .into_iter()
                        .map(|(case, keys)| {
                            let mut h = blake3::Hasher::new();
                            for k in keys.iter().chain(&global_inputs) {
                                h.update(k.to_hex().as_bytes());
                            }
                            let inputs = CacheKey::of(h.finalize().as_bytes());
                            PlannedItem {
                                key: finish(case.id.as_bytes(), inputs),
                                case,
                                inputs,
                            }
                        })
                        .collect()
                } else {
                    let mut h = blake3::Hasher::new();
                    for (case, keys) in &cases {
                        h.update(case.id.as_bytes());
                        h.update(b"\0");
                        // Which split a case is in changes what a whole-dataset stage makes
                        // of it (train or validate), though not the case's own items.
                        h.update(case.split.as_deref().unwrap_or("-").as_bytes());
                        h.update(b"\0");
                        for k in keys {
                            h.update(k.to_hex().as_bytes());
                        }
                    }
                    for k in &global_inputs {
                        h.update(k.to_hex().as_bytes());
                    }
                    let inputs = CacheKey::of(h.finalize().as_bytes());
                    members = cases.iter().map(|(c, _)| c.clone()).collect();
                    vec![PlannedItem {
                        key: finish(ALL_CASES.as_bytes(), inputs),
                        case: CaseInfo {
                            id: ALL_CASES.into(),
                            split: None,
                            fingerprint: format!("{} cases", cases.len()),
                        },
                        inputs,
                    }]
                }
            }
        };
        plans.push(NodePlan { items, members });
    }
    Ok(Plan { nodes: plans })
}

/// Why item `item` of node `n` would be computed (or `Cached`).
pub fn reason(resolved: &Resolved, n: usize, item: &PlannedItem, cache: &Cache) -> Reason {
    let node = &resolved.nodes[n];
    if !node.stage.cached() {
        return Reason::Uncached;
    }
    if cache.contains(&item.key).unwrap_or(false) {
        return Reason::Cached;
    }
    let mut best: Option<Reason> = None;
    for v in &node.variants {
        let name = record_name(&resolved.file.name, &node.id, v, &item.case.id);
        let rec = cache
            .record_get(&name)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice::<ItemRecord>(&b).ok());
        let r = match rec {
            None => Reason::NewCase,
            Some(r) if r.version != node.version => Reason::VersionChanged,
            Some(r) if r.params != params_hash(&node.keyed) => Reason::ParamsChanged,
            Some(r) if r.inputs != item.inputs.to_hex() => Reason::InputChanged,
            Some(_) => Reason::NotInCache,
        };
        // Prefer the most specific explanation over "new case".
        best = Some(match best {
            Some(b) if b != Reason::NewCase => b,
            _ => r,
        });
    }
    best.unwrap_or(Reason::NewCase)
}

/// Records that `item` of node `n` now exists, for later [`reason`]s.
pub fn record(resolved: &Resolved, n: usize, item: &PlannedItem, cache: &Cache) {
    let node = &resolved.nodes[n];
    let rec = ItemRecord {
        key: item.key.to_hex(),
        version: node.version,
        params: params_hash(&node.keyed),
        inputs: item.inputs.to_hex(),
    };
    let bytes = serde_json::to_vec(&rec).unwrap_or_default();
    for v in &node.variants {
        let name = record_name(&resolved.file.name, &node.id, v, &item.case.id);
        if cache.record_get(&name).ok().flatten().as_deref() != Some(bytes.as_slice()) {
            let _ = cache.record_put(&name, &bytes);
        }
    }
}

/// Per node: how many items are cached and why the others would be computed.
pub fn explain(resolved: &Resolved, plan: &Plan, cache: &Cache) -> Vec<BTreeMap<Reason, usize>> {
    plan.nodes
        .iter()
        .enumerate()
        .map(|(n, np)| {
            let mut m = BTreeMap::new();
            for it in &np.items {
                *m.entry(reason(resolved, n, it, cache)).or_insert(0) += 1;
            }
            m
        })
        .collect()
}
