//! From a pipeline file to the graph that runs: apply each variant's overrides, build every
//! stage through the registry (validating its params), and merge identical stage instances
//! across variants into one node, so that shared work is done once.

use crate::config::{ConfigError, ConfigErrors, ErrorKind, Override, PipelineFile};
use crate::stage::{nearest, Registry, Shape, Stage};
use crate::yaml::{Key, Node as YNode, Value};
use shapeflow_cache::CacheKey;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One stage instance to run; serves one or more variants.
pub struct GraphNode {
    /// Stage id from the file.
    pub id: String,
    pub plugin: String,
    pub version: u32,
    /// Params with defaults filled in (what the key hashes).
    pub params: serde_json::Value,
    pub stage: Arc<dyn Stage>,
    pub shape: Shape,
    /// Indices of the nodes this one reads, in `after` order.
    pub deps: Vec<usize>,
    pub variants: Vec<String>,
    /// Hash of plugin, version, params, seed (if used) and the deps' signatures.
    pub signature: CacheKey,
}

impl GraphNode {
    /// `stage` or `stage[variant,...]` when the pipeline has variants and this node is not
    /// shared by all of them.
    pub fn label(&self, all_variants: usize) -> String {
        if all_variants <= 1 || self.variants.len() == all_variants {
            self.id.clone()
        } else {
            format!("{}[{}]", self.id, self.variants.join(","))
        }
    }
}

/// The graph of a pipeline with all variants merged. Nodes are in topological order.
pub struct Resolved {
    pub file: PipelineFile,
    pub nodes: Vec<GraphNode>,
    /// variant -> stage id -> node index.
    pub by_variant: BTreeMap<String, BTreeMap<String, usize>>,
}

impl Resolved {
    pub fn variant_names(&self) -> Vec<String> {
        self.file.variants.iter().map(|v| v.name.clone()).collect()
    }

    /// The resolved config of one variant: stage id -> {plugin, version, params, after}.
    pub fn variant_config(&self, variant: &str) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        if let Some(stages) = self.by_variant.get(variant) {
            for (id, &n) in stages {
                let node = &self.nodes[n];
                m.insert(
                    id.clone(),
                    serde_json::json!({
                        "plugin": node.plugin,
                        "version": node.version,
                        "params": node.params,
                        "after": node.deps.iter().map(|&d| self.nodes[d].id.clone()).collect::<Vec<_>>(),
                    }),
                );
            }
        }
        serde_json::Value::Object(m)
    }
}

/// Stage ids in an order where every stage comes after its dependencies (file order kept
/// where free). The file was checked acyclic.
fn topo_order(file: &PipelineFile) -> Vec<usize> {
    let n = file.stages.len();
    let mut done = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let before = order.len();
        for i in 0..n {
            if done[i] {
                continue;
            }
            let ready = file.stages[i].after.iter().all(|(d, _)| {
                file.stages
                    .iter()
                    .position(|s| &s.id == d)
                    .is_some_and(|j| done[j])
            });
            if ready {
                done[i] = true;
                order.push(i);
            }
        }
        if order.len() == before {
            break; // unreachable for an acyclic file
        }
    }
    order
}

fn apply_override(params: &mut YNode, o: &Override) {
    if let Value::Map(m) = &mut params.value {
        if let Some((_, v)) = m.iter_mut().find(|(k, _)| k.name == o.param) {
            *v = o.value.clone();
        } else {
            m.push((
                Key {
                    name: o.param.clone(),
                    pos: o.pos,
                },
                o.value.clone(),
            ));
        }
    }
}

/// Validates everything against `registry` and builds the merged graph.
pub fn resolve(
    file: &PipelineFile,
    registry: &Registry,
    sets: &[Override],
) -> Result<Resolved, ConfigErrors> {
    let mut errors: Vec<ConfigError> = Vec::new();
    fn add(errors: &mut Vec<ConfigError>, e: ConfigError) {
        if !errors
            .iter()
            .any(|x| x.pos == e.pos && x.message == e.message)
        {
            errors.push(e);
        }
    }

    // Plugins exist, overrides name real stages and params.
    for s in &file.stages {
        if registry.get(&s.plugin).is_none() {
            let hint = registry
                .nearest(&s.plugin)
                .map(|n| format!(" (did you mean `{n}`?)"))
                .unwrap_or_default();
            add(
                &mut errors,
                file.error(
                    s.plugin_pos,
                    ErrorKind::UnknownPlugin,
                    format!(
                        "stage `{}`: unknown plugin `{}`{hint}; `pipeline plugins` lists them",
                        s.id, s.plugin
                    ),
                ),
            );
        }
    }
    let all_overrides = file
        .variants
        .iter()
        .flat_map(|v| v.overrides.iter().map(|o| (ErrorKind::BadVariant, o)))
        .chain(sets.iter().map(|o| (ErrorKind::BadOverride, o)));
    for (kind, o) in all_overrides {
        let Some(stage) = file.stage(&o.stage) else {
            let hint = nearest(&o.stage, file.stages.iter().map(|s| s.id.as_str()))
                .map(|n| format!(" (did you mean `{n}`?)"))
                .unwrap_or_default();
            add(
                &mut errors,
                file.error(
                    o.pos,
                    kind,
                    format!("{}: there is no stage `{}`{hint}", o.origin, o.stage),
                ),
            );
            continue;
        };
        let Some(f) = registry.get(&stage.plugin) else {
            continue;
        };
        let names: Vec<String> = f.params().into_iter().map(|p| p.name).collect();
        if !names.contains(&o.param) {
            let hint = nearest(&o.param, names.iter().map(String::as_str))
                .map(|n| format!(" (did you mean `{n}`?)"))
                .unwrap_or_default();
            add(
                &mut errors,
                file.error(
                    o.pos,
                    kind,
                    format!(
                        "{}: stage `{}` ({}) has no param `{}`{hint}",
                        o.origin, o.stage, stage.plugin, o.param
                    ),
                ),
            );
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }

    let order = topo_order(file);
    let build_ctx = crate::stage::BuildCtx {
        base_dir: file.base_dir(),
    };
    let mut nodes: Vec<GraphNode> = Vec::new();
    let mut by_sig: BTreeMap<CacheKey, usize> = BTreeMap::new();
    let mut by_variant: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for variant in &file.variants {
        let mut here: BTreeMap<String, usize> = BTreeMap::new();
        for &si in &order {
            let spec = &file.stages[si];
            let Some(factory) = registry.get(&spec.plugin) else {
                continue;
            };
            let mut params = spec.params.clone();
            for o in variant
                .overrides
                .iter()
                .chain(sets)
                .filter(|o| o.stage == spec.id)
            {
                apply_override(&mut params, o);
            }
            let built = match factory.build(&params.to_json(), &build_ctx) {
                Ok(b) => b,
                Err(pe) => {
                    add(
                        &mut errors,
                        param_error(
                            file,
                            &spec.id,
                            &spec.plugin,
                            &params,
                            pe,
                            factory.params().iter().map(|p| p.name.clone()).collect(),
                        ),
                    );
                    continue;
                }
            };
            let shape = built.stage.shape();
            let deps: Vec<usize> = spec
                .after
                .iter()
                .filter_map(|(d, _)| here.get(d).copied())
                .collect();
            if deps.len() != spec.after.len() {
                continue; // a dependency failed to build; its error is already reported
            }
            match shape {
                Shape::Source if !deps.is_empty() => add(&mut errors, file.error(
                    spec.pos,
                    ErrorKind::UnknownDependency,
                    format!("stage `{}` ({}) finds its own cases and takes no `after`", spec.id, spec.plugin),
                )),
                Shape::PerCase | Shape::Gather if !deps.iter().any(|&d| nodes[d].shape != Shape::Gather) => add(&mut errors, file.error(
                    spec.pos,
                    ErrorKind::UnknownDependency,
                    format!("stage `{}` ({}) needs a per-case input: list a stage under `after`", spec.id, spec.plugin),
                )),
                _ => {}
            }
            let mut h = blake3::Hasher::new();
            h.update(b"shapeflow-node-v1\0");
            h.update(spec.plugin.as_bytes());
            h.update(&factory.version().to_le_bytes());
            h.update(spec.id.as_bytes());
            h.update(built.canonical.to_string().as_bytes());
            if built.stage.uses_seed() {
                h.update(&file.seed.to_le_bytes());
            }
            h.update(built.stage.key_material().as_bytes());
            for &d in &deps {
                h.update(nodes[d].signature.to_hex().as_bytes());
            }
            let signature = CacheKey::of(h.finalize().as_bytes());
            let idx = *by_sig.entry(signature).or_insert_with(|| {
                nodes.push(GraphNode {
                    id: spec.id.clone(),
                    plugin: spec.plugin.clone(),
                    version: factory.version(),
                    params: built.canonical.clone(),
                    stage: built.stage.clone(),
                    shape,
                    deps: deps.clone(),
                    variants: Vec::new(),
                    signature,
                });
                nodes.len() - 1
            });
            nodes[idx].variants.push(variant.name.clone());
            here.insert(spec.id.clone(), idx);
        }
        by_variant.insert(variant.name.clone(), here);
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Resolved {
        file: file.clone(),
        nodes,
        by_variant,
    })
}

fn param_error(
    file: &PipelineFile,
    stage: &str,
    plugin: &str,
    params: &YNode,
    pe: crate::stage::ParamError,
    known: Vec<String>,
) -> ConfigError {
    // serde says "unknown field `x`, expected one of ..." and "missing field `x`".
    let quoted = pe.message.split('`').nth(1).map(str::to_string);
    if pe.message.starts_with("unknown field") {
        if let Some(name) = quoted {
            let mut path = pe.path.clone();
            if path.last() != Some(&name) {
                path.push(name.clone());
            }
            let parent = params.locate(&path[..path.len() - 1]);
            let pos = parent.key(&name).map(|k| k.pos).unwrap_or(parent.pos);
            let hint = nearest(&name, known.iter().map(String::as_str))
                .map(|n| format!(" (did you mean `{n}`?)"))
                .unwrap_or_default();
            return file.error(
                pos,
                ErrorKind::UnknownParam,
                format!(
                    "stage `{stage}` ({plugin}): unknown param `{}`{hint}; its params are: {}",
                    path.join("."),
                    known.join(", ")
                ),
            );
        }
    }
    let node = params.locate(&pe.path);
    let what = if pe.path.is_empty() {
        String::new()
    } else {
        format!(" param `{}`", pe.path.join("."))
    };
    file.error(
        node.pos,
        ErrorKind::BadParam,
        format!("stage `{stage}` ({plugin}){what}: {}", pe.message),
    )
}
