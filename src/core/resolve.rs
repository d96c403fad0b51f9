//! From a pipeline file to the graph that runs: apply each variant's overrides, build every
//! stage through the registry (validating its params), and merge identical stage instances
//! across variants into one node, so that shared work is done once.

use crate::config::{ConfigError, ConfigErrors, ErrorKind, Override, PipelineFile};
use crate::data::Kind;
use crate::stage::{nearest, Port, Registry, Shape, Stage};
use crate::yaml::Pos;
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
    /// Every param with defaults filled in (what the manifest records).
    pub params: serde_json::Value,
    /// The seed this node runs with: the variant's (with `seeds:`) unless it is a source,
    /// else the file's.
    pub seed: u64,
    /// The output-defining params: `params` less the execution-only ones. What the cache
    /// key hashes.
    pub keyed: serde_json::Value,
    pub stage: Arc<dyn Stage>,
    pub shape: Shape,
    /// Indices of the nodes this one reads, in `after` order.
    pub deps: Vec<usize>,
    /// Each declared input port and the stage id it reads (checked at `validate`).
    pub bindings: Arc<Vec<(String, String)>>,
    pub variants: Vec<String>,
    /// Hash of plugin, version, keyed params, seed (if used) and the deps' signatures.
    /// Variants that differ only in execution-only params share one node (and run with the
    /// first variant's settings): their outputs are the same.
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
                        "stage `{}`: unknown stage `{}`{hint}; `pipeline plugins` lists them",
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
            let dep_kinds: Vec<(&str, Kind, Pos)> = spec
                .after
                .iter()
                .zip(&deps)
                .map(|((id, pos), &d)| (id.as_str(), nodes[d].stage.output(), *pos))
                .collect();
            let bindings = match bind_ports(file, spec, &params, &*built.stage, &dep_kinds) {
                Ok(b) => b,
                Err(e) => {
                    for e in e {
                        add(&mut errors, e);
                    }
                    continue;
                }
            };
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
            h.update(built.keyed.to_string().as_bytes());
            h.update(built.assignment.to_string().as_bytes());
            let seed = match (variant.seed, shape) {
                (Some(s), Shape::PerCase | Shape::Gather) => s,
                _ => file.seed,
            };
            if built.stage.uses_seed() {
                h.update(&seed.to_le_bytes());
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
                    seed,
                    keyed: built.keyed.clone(),
                    stage: built.stage.clone(),
                    shape,
                    deps: deps.clone(),
                    bindings: Arc::new(bindings.clone()),
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

/// Binds each declared port of `stage` to one of its dependencies (`deps`: stage id, the
/// kind it produces, the position of its `after` entry): the stage a param names, else the
/// first free dependency of exactly the port's kind, else the first free one the port takes.
/// Every dependency must feed a port (unless the stage has a [`Kind::Any`] port).
fn bind_ports(
    file: &PipelineFile,
    spec: &crate::config::StageSpec,
    params: &YNode,
    stage: &dyn Stage,
    deps: &[(&str, Kind, Pos)],
) -> Result<Vec<(String, String)>, Vec<ConfigError>> {
    let ports: Vec<Port> = stage.ports();
    let mut errors = Vec::new();
    let mut bound: Vec<Option<usize>> = vec![None; ports.len()];
    let mut used = vec![false; deps.len()];
    let who = format!("stage `{}` ({})", spec.id, spec.plugin);
    for (pi, p) in ports.iter().enumerate() {
        let Some((id, param)) = &p.from else { continue };
        let at = params.locate(&[param.to_string()]).pos;
        match deps.iter().position(|(d, _, _)| d == id) {
            None => errors.push(file.error(
                at,
                ErrorKind::Wiring,
                format!("{who}: `{param}: {id}` is not listed under `after`"),
            )),
            Some(di) if !p.kind.takes(deps[di].1) => errors.push(file.error(
                at,
                ErrorKind::Wiring,
                format!(
                    "{who}: `{param}: {id}` gives {}, but input `{}` takes {}",
                    deps[di].1.describe(),
                    p.name,
                    p.kind.describe()
                ),
            )),
            Some(di) => {
                bound[pi] = Some(di);
                used[di] = true;
            }
        }
    }
    let takes_rest = ports.iter().any(|p| p.kind == Kind::Any);
    for exact in [true, false] {
        for (pi, p) in ports.iter().enumerate() {
            if bound[pi].is_some() || p.from.is_some() || p.kind == Kind::Any {
                continue;
            }
            let found = deps.iter().enumerate().position(|(di, (_, k, _))| {
                !used[di]
                    && if exact {
                        *k == p.kind
                    } else {
                        p.kind.takes(*k)
                    }
            });
            if let Some(di) = found {
                bound[pi] = Some(di);
                used[di] = true;
            }
        }
    }
    let given = || {
        if deps.is_empty() {
            "its `after` lists nothing".to_string()
        } else {
            let list: Vec<String> = deps
                .iter()
                .map(|(d, k, _)| format!("`{d}` ({})", k.describe()))
                .collect();
            format!("its `after` gives {}", list.join(", "))
        }
    };
    for (pi, p) in ports.iter().enumerate() {
        if bound[pi].is_none() && p.required && p.from.is_none() && p.kind != Kind::Any {
            let at = spec.after.first().map(|(_, pos)| *pos).unwrap_or(spec.pos);
            errors.push(file.error(
                at,
                ErrorKind::Wiring,
                format!(
                    "{who} needs {} as input `{}`; {}",
                    p.kind.describe(),
                    p.name,
                    given()
                ),
            ));
        }
    }
    // An input no port takes is reported only when every port is bound: otherwise the
    // missing input already says what is wrong.
    if !takes_rest && errors.is_empty() {
        for (di, (d, k, pos)) in deps.iter().enumerate() {
            if used[di] {
                continue;
            }
            let wants: Vec<String> = ports
                .iter()
                .map(|p| format!("`{}` ({})", p.name, p.kind.describe()))
                .collect();
            errors.push(file.error(
                *pos,
                ErrorKind::Wiring,
                format!(
                    "{who} has no input for `{d}` ({}): its inputs are {}",
                    k.describe(),
                    if wants.is_empty() {
                        "none".to_string()
                    } else {
                        wants.join(", ")
                    }
                ),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ports
        .iter()
        .zip(&bound)
        .filter_map(|(p, b)| b.map(|di| (p.name.to_string(), deps[di].0.to_string())))
        .collect())
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
